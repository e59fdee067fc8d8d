"""The AWS developer guide's chat-app walk-through, frame by frame."""
import asyncio
import re
import unittest

from harness import StackTest, connect, recv_text, no_message

ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
DEFAULT_RE = re.compile(
    r'^Use the sendmessage route to send a message\. Your info: '
    r'\{"ConnectedAt":"(' + ISO + r')","Identity":\{"SourceIp":"127\.0\.0\.1","UserAgent":(null|"[^"]*")\},'
    r'"LastActiveAt":"(' + ISO + r')","connectionID":"([A-Za-z0-9_-]{16})"\}$')


class AwsGuide(StackTest):
    def test_guide_steps(self):
        st = self.stack
        url = st.edges[0].url

        async def scenario():
            a = await connect(url)
            b = await connect(url, user_agent_header=None)
            await asyncio.to_thread(st.wait_conn_count, 2)
            ids = st.conn_ids()

            await a.send('{"action": "sendmessage", "message": "hello, everyone!"}')
            self.assertEqual(await recv_text(a), "hello, everyone!")
            self.assertEqual(await recv_text(b), "hello, everyone!")

            # The aws-samples app sends "data" instead of "message".
            await b.send('{"action":"sendmessage","data":"from b"}')
            self.assertEqual(await recv_text(a), "from b")
            self.assertEqual(await recv_text(b), "from b")

            for frame in ["test", '{"action":"nosuchroute","data":"x"}', "{not json"]:
                await a.send(frame)
                reply = await recv_text(a)
                m = DEFAULT_RE.match(reply)
                self.assertIsNotNone(m, reply)
                self.assertIn(m.group(4), ids)
                self.assertIsNone(await no_message(b, 0.2), "the $default reply went to someone else")

            # b has no User-Agent header: AWS shows null.
            await b.send("test")
            m = DEFAULT_RE.match(await recv_text(b))
            self.assertIsNotNone(m)
            self.assertEqual(m.group(2), "null")
            b_id = m.group(4)

            await b.close()
            await asyncio.to_thread(st.wait_conn_count, 1)
            self.assertNotIn(b_id, st.conn_ids())

            await a.send('{"action":"sendmessage","message":"still here"}')
            self.assertEqual(await recv_text(a), "still here")
            await a.close()
            await asyncio.to_thread(st.wait_conn_count, 0)

        self.run_async(scenario())

    def test_bad_sendmessage_gets_an_error_not_a_crash(self):
        st = self.stack

        async def scenario():
            a = await connect(st.edges[0].url)
            await asyncio.to_thread(st.wait_conn_count, 1)
            await a.send('{"action":"sendmessage"}')
            reply = await recv_text(a)
            self.assertIn('"message":"Bad request:', reply)
            self.assertIn('"connectionId":', reply)
            # Binary frames are refused with 1003; the edge stays up.
            b = await connect(st.edges[0].url)
            await b.send(b"\x00\x01binary")
            with self.assertRaises(Exception):
                await recv_text(b, 5)
            self.assertEqual(b.close_code, 1003)
            await a.send('{"action":"sendmessage","data":"ok"}')
            self.assertEqual(await recv_text(a), "ok")
            await a.close()

        self.run_async(scenario())
        self.assertTrue(st.edges[0].alive())

    def test_clean_shutdown(self):
        codes = self.stack.stop()
        codes.pop("nats")  # nats-server's own exit code on SIGTERM is 1
        for name, code in codes.items():
            self.assertEqual(code, 0, f"{name} exited {code} on SIGTERM")


if __name__ == "__main__":
    unittest.main()
