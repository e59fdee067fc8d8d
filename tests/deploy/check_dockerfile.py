#!/usr/bin/env python3
"""Check the Dockerfile against the package list and the binaries.

    check_dockerfile.py [--repo DIR] [--bin-dir DIR]

- The build stage installs exactly scripts/packages.txt, the list `make up`
  installs: it copies that file and feeds it to apt-get through xargs (after
  the same comment/blank-line stripping scripts/deps.sh does), and installs
  nothing else.
- The runtime stage installs no compiler, no build tool and no -dev package;
  it builds on the same base image; it runs as a non-root numeric user,
  stops with SIGTERM and ships every binary.
- With --bin-dir (the CMake build's bin/): every shared library a binary
  needs (ELF NEEDED) comes from a package the runtime stage installs or from
  the base image, and every library package it installs is needed by some
  binary (checked when every binary is there).

Exit 0 when everything holds, 1 otherwise (one line per problem).
"""
import argparse
import os
import re
import shlex
import subprocess
import sys

BINARIES = ["edge", "registry", "dispatcher", "deadletter", "api", "dwctl"]
BASE_IMAGE = "debian:bookworm-slim"
# Packages debian:bookworm-slim already has (libc, the C++ runtime that apt
# itself links, zlib): a binary may need them without the stage installing them.
BASE_PACKAGES = {"libc6", "libgcc-s1", "libstdc++6", "zlib1g"}
# Not libraries, but wanted at run time.
RUNTIME_EXTRAS = {"ca-certificates"}
FORBIDDEN_RUNTIME = re.compile(
    r"^(build-essential|gcc(-\d+)?|g\+\+(-\d+)?|cpp(-\d+)?|clang(-\d+)?|cmake|make|"
    r"pkg-config|pkgconf|binutils|protobuf-c-compiler|libc6-dev|.*-dev)$"
)

problems = []


def fail(msg):
    problems.append(msg)
    print(f"FAIL {msg}")


def deps_sh_list(path):
    """The package list exactly as scripts/deps.sh reads it."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            pkg = re.sub(r"\s", "", line.split("#", 1)[0])
            if pkg:
                out.append(pkg)
    return out


def instructions(path):
    """Dockerfile instructions as (keyword, text), continuations joined."""
    out, cur = [], ""
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not cur and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if cur and line.lstrip().startswith("#"):
                continue  # comment lines inside a continued instruction
            if line.endswith("\\"):
                cur += line[:-1] + " "
                continue
            cur += line
            kw, _, rest = cur.strip().partition(" ")
            out.append((kw.upper(), rest.strip()))
            cur = ""
    return out


def stages(instrs):
    """{stage name: [(kw, text)]}, plus the ARG defaults before the first FROM."""
    args, result, order, name = {}, {}, [], None
    for kw, text in instrs:
        if kw == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", text, re.I)
            name = (m.group(2) or f"stage{len(order)}").lower()
            image = re.sub(r"\$\{?(\w+)\}?", lambda v: args.get(v.group(1), v.group(0)), m.group(1))
            result[name] = [("FROM", image)]
            order.append(name)
        elif name is None:
            if kw == "ARG" and "=" in text:
                k, v = text.split("=", 1)
                args[k.strip()] = v.strip()
        else:
            result[name].append((kw, text))
    return result, order


def apt_installs(text):
    """Package names of every `apt-get install` in one RUN (flags dropped)."""
    pkgs = []
    for cmd in re.split(r"&&|;|\|", text):
        words = shlex.split(cmd)
        if "apt-get" in words and "install" in words and "xargs" not in words:
            i = words.index("install")
            pkgs += [w for w in words[i + 1:] if not w.startswith("-")]
    return pkgs


def needed_packages(binary):
    """{package} providing each ELF NEEDED library of binary."""
    out = subprocess.run(["readelf", "-d", binary], capture_output=True, text=True, check=True).stdout
    libs = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)
    cache = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    pkgs = {}
    for lib in libs:
        m = re.search(rf"^\s*{re.escape(lib)} \(([^)]*x86-64[^)]*|[^)]*)\) => (\S+)", cache, re.M)
        if not m:
            fail(f"{os.path.basename(binary)}: {lib} is not in the ldconfig cache")
            continue
        real = os.path.realpath(m.group(2))
        found = None
        for candidate in (m.group(2), real, real.replace("/usr/lib/", "/lib/", 1), m.group(2).replace("/lib/", "/usr/lib/", 1)):
            r = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
            if r.returncode == 0:
                found = r.stdout.split(":", 1)[0].strip()
                break
        if not found:
            fail(f"{os.path.basename(binary)}: no Debian package owns {lib} ({real})")
            continue
        pkgs[lib] = found
    return pkgs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--repo", default=os.path.normpath(os.path.join(here, "..", "..")))
    ap.add_argument("--bin-dir", help="directory with the built binaries (build/bin)")
    a = ap.parse_args()

    dockerfile = os.path.join(a.repo, "Dockerfile")
    pkgfile = os.path.join(a.repo, "scripts", "packages.txt")
    for p in (dockerfile, pkgfile):
        if not os.path.isfile(p):
            fail(f"{p} does not exist")
            return 1
    wanted = deps_sh_list(pkgfile)
    st, order = stages(instructions(dockerfile))
    if len(order) < 2:
        fail("the Dockerfile needs a build stage and a runtime stage")
        return 1
    build, runtime = st[order[0]], st[order[-1]]

    # ---- build stage: exactly scripts/packages.txt --------------------------
    copy_dst = None
    for kw, text in build:
        m = re.match(r"(?:--\S+\s+)*scripts/packages\.txt\s+(\S+)$", text) if kw == "COPY" else None
        if m:
            copy_dst = m.group(1)
    if not copy_dst:
        fail("build stage: no `COPY scripts/packages.txt <dst>`")
    feeding = [t for k, t in build if k == "RUN" and copy_dst and copy_dst in t]
    if copy_dst and not any(re.search(r"xargs\s+(?:-\S+\s+)*apt-get\s+install", t) for t in feeding):
        fail(f"build stage: no RUN feeds {copy_dst} to `xargs apt-get install`")
    for t in feeding:
        # Run the Dockerfile's own filter over the real file: it must yield
        # the list deps.sh installs, in the same order.
        m = re.search(r"((?:sed|grep)\s[^|]*" + re.escape(copy_dst) + r"[^|]*(?:\|\s*(?:grep|sed)\s[^|]*)*)\|\s*xargs", t)
        if not m:
            continue
        pipeline = m.group(1).replace(copy_dst, shlex.quote(pkgfile))
        got = subprocess.run(["sh", "-c", pipeline], capture_output=True, text=True).stdout.split()
        if got != wanted:
            fail(f"build stage: the Dockerfile's filter yields {got}, scripts/deps.sh installs {wanted}")
        else:
            print(f"ok   build stage installs scripts/packages.txt ({len(wanted)} packages)")
    extra = [p for k, t in build if k == "RUN" for p in apt_installs(t)]
    if extra:
        fail(f"build stage installs packages outside scripts/packages.txt: {extra}")

    # ---- runtime stage ------------------------------------------------------
    for name in (order[0], order[-1]):
        image = st[name][0][1]
        if image != BASE_IMAGE:
            fail(f"stage {name} is FROM {image}, not {BASE_IMAGE}")
    rt_pkgs = [p for k, t in runtime if k == "RUN" for p in apt_installs(t)]
    if not rt_pkgs:
        fail("runtime stage installs no package (where do the shared libraries come from?)")
    for k, t in runtime:
        if k == "RUN" and "apt-get install" in t and "--no-install-recommends" not in t:
            fail("runtime stage: apt-get install without --no-install-recommends")
        if k == "RUN" and "apt-get install" in t and "rm -rf /var/lib/apt/lists" not in t:
            fail("runtime stage: apt lists left in the image")
    for p in rt_pkgs:
        if FORBIDDEN_RUNTIME.match(p):
            fail(f"runtime stage installs {p}: no compiler, build tool or -dev package belongs there")
    users = [t for k, t in runtime if k == "USER"]
    if not users or not re.match(r"^[1-9]\d*(:[1-9]\d*)?$", users[-1]):
        fail(f"runtime stage: the last USER must be a non-root numeric uid (got {users[-1] if users else 'none'})")
    if ("STOPSIGNAL", "SIGTERM") not in runtime:
        fail("runtime stage: STOPSIGNAL SIGTERM missing")
    if not any(k in ("CMD", "ENTRYPOINT") for k, _ in runtime):
        fail("runtime stage: no CMD")
    build_text = " ".join(t for _, t in build)
    for b in BINARIES:
        if not re.search(rf"\b{b}\b", build_text):
            fail(f"build stage does not build/install {b}")
    if not problems:
        print(f"ok   runtime stage: {' '.join(rt_pkgs)}; non-root, SIGTERM, {len(BINARIES)} binaries")

    # ---- runtime libraries against the real binaries ------------------------
    if a.bin_dir:
        present = [b for b in BINARIES if os.path.isfile(os.path.join(a.bin_dir, b))]
        missing = sorted(set(BINARIES) - set(present))
        needed = set()
        for b in present:
            for lib, pkg in needed_packages(os.path.join(a.bin_dir, b)).items():
                needed.add(pkg)
                if pkg not in rt_pkgs and pkg not in BASE_PACKAGES:
                    fail(f"{b} needs {lib} from {pkg}, which the runtime stage does not install")
        if missing:
            print(f"note: not built yet, not checked: {' '.join(missing)}")
        else:
            unused = sorted(set(rt_pkgs) - needed - RUNTIME_EXTRAS)
            if unused:
                fail(f"runtime stage installs {unused}, which no binary links")
        if present and not problems:
            print(f"ok   runtime libraries cover {' '.join(present)}: {' '.join(sorted(needed))}")

    print(f"{0 if problems else 1} passed, {1 if problems else 0} failed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
