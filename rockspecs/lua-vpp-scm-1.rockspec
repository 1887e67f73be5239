rockspec_format = "3.0"
package = "lua-vpp"
-- The development rockspec, building from the repository; `make rockspec`
-- writes the release one (rockspecs/lua-vpp-VERSION-1.rockspec, for the
-- tag vVERSION) from this file and src/vpp.h's VPP_VERSION.
version = "scm-1"
source = {
  url = "git+https://github.com/lua-vpp/lua-vpp.git",
  branch = "main",
}
description = {
  summary = "Microsoft Graph (Intune) Apple VPP token actions for Lua, in C over libcurl",
  detailed = [[
    Runs the Intune Apple VPP token actions (syncLicenses and the legacy
    syncApps), gets and lists tokens, and returns Lua tables that mirror
    Graph's JSON. HTTP is done natively with libcurl, with connection reuse,
    TLS verification and structured errors.
  ]],
  homepage = "https://github.com/lua-vpp/lua-vpp",
  issues_url = "https://github.com/lua-vpp/lua-vpp/issues",
  maintainer = "The lua-vpp developers",
  license = "MIT",
  labels = { "intune", "graph", "vpp", "apple", "curl" },
}
-- POSIX only (src/platform.c); tested on Debian, written for the BSDs and macOS.
supported_platforms = { "linux", "macosx", "bsd" }
dependencies = {
  "lua >= 5.1, < 5.5", -- and LuaJIT 2.1
  "lua-cjson >= 2.1.0",
  "argparse >= 0.6", -- the vpp command only
  "lyaml >= 6", -- fleets' tenants files only (Debian: lua-yaml)
}
external_dependencies = {
  -- No header check: Debian keeps curl/curl.h in a multiarch include
  -- directory that luarocks does not search, while the compiler does.
  CURL = { library = "curl" },
  OPENSSL = { header = "openssl/evp.h", library = "crypto" },
}
build = {
  type = "builtin",
  modules = {
    vpp = "lua/vpp.lua",
    ["vpp.tokens"] = "lua/vpp/tokens.lua",
    ["vpp.sync"] = "lua/vpp/sync.lua",
    ["vpp.env"] = "lua/vpp/env.lua",
    ["vpp.evented"] = "lua/vpp/evented.lua",
    ["vpp.loop.cqueues"] = "lua/vpp/loop/cqueues.lua",
    ["vpp.loop.luv"] = "lua/vpp/loop/luv.lua",
    ["vpp.fleet"] = "lua/vpp/fleet.lua",
    ["vpp.health"] = "lua/vpp/health.lua",
    ["vpp.cli"] = "lua/vpp/cli.lua",
    ["vpp.cli.check"] = "lua/vpp/cli/check.lua",
    ["vpp.cli.format"] = "lua/vpp/cli/format.lua",
    ["vpp.cli.fields"] = "lua/vpp/cli/fields.lua",
    ["vpp.cli.progress"] = "lua/vpp/cli/progress.lua",
    ["vpp.cli.output"] = "lua/vpp/cli/output.lua",
    ["vpp.core"] = {
      sources = {
        "src/auth.c", "src/base.c", "src/batch.c", "src/client.c", "src/decode.c", "src/engine.c",
        "src/errors.c", "src/json.c", "src/jwt.c", "src/options.c", "src/platform.c", "src/run.c", "src/throttle.c",
        "src/transfer.c", "src/url.c", "src/vpp.c",
      },
      defines = { "_GNU_SOURCE" },
      libraries = { "curl", "crypto", "m", "pthread" },
      incdirs = { "$(CURL_INCDIR)", "$(OPENSSL_INCDIR)" },
      libdirs = { "$(CURL_LIBDIR)", "$(OPENSSL_LIBDIR)" },
    },
  },
  install = { bin = { vpp = "bin/vpp" } },
  copy_directories = { "doc", "examples" },
}
-- The whole suite, as `make test` runs it: it builds the module in the
-- tree and starts the fake Graph and the other servers it talks to.
test = { type = "command", command = "make test" }
