"""WORKSPACE setup for rules_img.

    load("@rules_img//img:repositories.bzl", "rules_img_dependencies")
    rules_img_dependencies()
"""

load("//img/private:tool.bzl", "img_tool_repository")

def rules_img_dependencies(img_binary = ""):
    """Declares @rules_img_tool, the img binary the rules run.

    Args:
      img_binary: absolute path of a prebuilt img; empty builds img from rules_img's
        Go source with the host Go (the IMG_TOOL_BINARY environment variable wins).
    """
    if not native.existing_rule("rules_img_tool"):
        img_tool_repository(name = "rules_img_tool", binary = img_binary)
