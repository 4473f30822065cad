"""Bzlmod extension that declares @rules_img_tool (untested: Bazel 4.2.3 has no Bzlmod)."""

load("//img/private:tool.bzl", "img_tool_repository")

def _img_tool_impl(module_ctx):
    binary = ""
    for mod in module_ctx.modules:
        for config in mod.tags.binary:
            binary = config.path
    img_tool_repository(name = "rules_img_tool", binary = binary)

img_tool = module_extension(
    implementation = _img_tool_impl,
    tag_classes = {
        "binary": tag_class(attrs = {"path": attr.string(doc = "Absolute path of a prebuilt img.")}),
    },
)
