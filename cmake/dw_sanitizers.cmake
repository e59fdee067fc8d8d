# -DDW_SANITIZE=address,undefined or -DDW_SANITIZE=thread
if(DW_SANITIZE)
  add_compile_options(-fsanitize=${DW_SANITIZE} -fno-omit-frame-pointer -g)
  add_link_options(-fsanitize=${DW_SANITIZE})
  if(DW_SANITIZE MATCHES "undefined")
    add_compile_options(-fno-sanitize-recover=undefined)
  endif()
endif()
