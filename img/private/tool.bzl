"""The img binary: a repository rule that builds it with the host Go, and img_binary."""

def _img_binary_impl(ctx):
    out = ctx.actions.declare_file(ctx.label.name + "_bin")
    ctx.actions.symlink(output = out, target_file = ctx.file.src, is_executable = True)
    return [DefaultInfo(executable = out, files = depset([out]))]

img_binary = rule(
    implementation = _img_binary_impl,
    executable = True,
    doc = "Makes a prebuilt img binary usable as --@rules_img//img/settings:img_tool.",
    attrs = {
        "src": attr.label(allow_single_file = True, mandatory = True, doc = "The img executable."),
    },
)

_BUILD = """load("@rules_img//img/private:tool.bzl", "img_binary")

img_binary(
    name = "img",
    src = "img_bin",
    visibility = ["//visibility:public"],
)
"""

def _img_tool_repository_impl(rctx):
    prebuilt = rctx.os.environ.get("IMG_TOOL_BINARY", "") or rctx.attr.binary
    if prebuilt:
        rctx.symlink(prebuilt, "img_bin")
        rctx.file("BUILD.bazel", _BUILD)
        return

    go = rctx.which("go")
    if go == None:
        fail("rules_img: no `go` on PATH to build the img tool; install Go, set IMG_TOOL_BINARY to a prebuilt img, " +
             "or set --@rules_img//img/settings:img_tool to an img_binary target")

    source = rctx.path(Label("//:go.mod")).dirname
    result = rctx.execute(
        # -trimpath and -buildvcs=false make the binary depend only on the source and
        # the Go version, so every action that runs it keeps its remote-cache key.
        [go, "build", "-trimpath", "-buildvcs=false", "-o", str(rctx.path("img_bin")), "./cmd/img"],
        working_directory = str(source),
        environment = {
            "CGO_ENABLED": "0",
            # Modules come from the module cache or GOPROXY; go.mod is never rewritten.
            "GOFLAGS": "-mod=readonly",
            "GOTOOLCHAIN": "local",
        },
        timeout = rctx.attr.timeout,
        quiet = True,
    )
    if result.return_code != 0:
        fail("rules_img: `go build ./cmd/img` in %s failed. It needs every module in go.mod in the Go module cache " +
             "(go env GOMODCACHE) or a reachable GOPROXY; `go mod download` there fills the cache.\n%s%s" % (source, result.stdout, result.stderr))
    rctx.file("BUILD.bazel", _BUILD)

img_tool_repository = repository_rule(
    implementation = _img_tool_repository_impl,
    doc = """Provides @NAME//:img, the img binary: IMG_TOOL_BINARY or `binary` when set, else built
from rules_img's Go source with the `go` on PATH. The build is not redone when the Go source
changes; run `bazel sync --only=NAME` after updating rules_img's source in place.""",
    attrs = {
        "binary": attr.string(doc = "Absolute path of a prebuilt img binary to use instead of building one."),
        "timeout": attr.int(default = 900, doc = "Seconds that `go build` may take."),
    },
    environ = ["IMG_TOOL_BINARY", "PATH", "GOPROXY", "GOMODCACHE", "GOCACHE", "GOPATH", "HOME"],
)
