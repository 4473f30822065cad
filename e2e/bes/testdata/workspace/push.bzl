"""A stand-in for the rules_img push rule, for the img bes end-to-end test.

image_push builds a one-layer OCI image from a text file and writes a push request
(version 1) for it into the img_push_request output group, as the rules_img push rule
does. The registry comes from --define=registry=HOST:PORT. Every blob is an output of a
spawned action, so Bazel uploads it to the remote cache, where img bes reads it.
"""

_BUILD_IMAGE = """
set -euo pipefail
work="$(mktemp -d)"
sleep "$DELAY"
printf '%s\\n' "$CONTENT" > "$work/hello.txt"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$work/layer.tar" -C "$work" hello.txt
gzip -n -c "$work/layer.tar" > "$LAYER"
diff_id="sha256:$(sha256sum "$work/layer.tar" | cut -d' ' -f1)"
printf '{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":["%s"]}}' "$diff_id" > "$CONFIG"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%d}]}' \\
  "$(sha256sum "$CONFIG" | cut -d' ' -f1)" "$(stat -L -c %s "$CONFIG")" \\
  "$(sha256sum "$LAYER" | cut -d' ' -f1)" "$(stat -L -c %s "$LAYER")" > "$MANIFEST"
rm -rf "$work"
"""

# Inputs are symlinks in the sandbox, so stat follows them (-L) to get the blob size.
_WRITE_REQUEST = """
set -euo pipefail
descriptor() {
  printf '{"mediaType":"%s","digest":"sha256:%s","size":%d}' "$1" "$(sha256sum "$2" | cut -d' ' -f1)" "$(stat -L -c %s "$2")"
}
manifest="$(descriptor application/vnd.oci.image.manifest.v1+json "$MANIFEST")"
config="$(descriptor application/vnd.oci.image.config.v1+json "$CONFIG")"
layer="$(descriptor application/vnd.oci.image.layer.v1.tar+gzip "$LAYER")"
printf '{"version":1,"strategy":"%s","root":%s,"manifests":[{"descriptor":%s,"config":%s,"layers":[%s]}],"destinations":[{"registry":"%s","repository":"%s","tags":["%s"]}]}\\n' \\
  "$STRATEGY" "$manifest" "$manifest" "$config" "$layer" "$REGISTRY" "$REPOSITORY" "$TAG" > "$REQUEST"
"""

def _image_push_impl(ctx):
    layer = ctx.actions.declare_file(ctx.label.name + "/layer.tar.gz")
    config = ctx.actions.declare_file(ctx.label.name + "/config.json")
    manifest = ctx.actions.declare_file(ctx.label.name + "/manifest.json")
    ctx.actions.run_shell(
        outputs = [layer, config, manifest],
        command = _BUILD_IMAGE,
        env = {
            "CONTENT": ctx.attr.content,
            "DELAY": str(ctx.attr.delay_seconds),
            "LAYER": layer.path,
            "CONFIG": config.path,
            "MANIFEST": manifest.path,
        },
        mnemonic = "TestImage",
    )

    request = ctx.actions.declare_file(ctx.label.name + ".push_request.json")
    ctx.actions.run_shell(
        inputs = [layer, config, manifest],
        outputs = [request],
        command = _WRITE_REQUEST,
        env = {
            "STRATEGY": ctx.attr.strategy,
            "REGISTRY": ctx.var.get("registry", "127.0.0.1:5000"),
            "REPOSITORY": ctx.attr.repository,
            "TAG": ctx.attr.tag,
            "LAYER": layer.path,
            "CONFIG": config.path,
            "MANIFEST": manifest.path,
            "REQUEST": request.path,
        },
        mnemonic = "PushRequest",
    )
    return [
        DefaultInfo(files = depset([request])),
        OutputGroupInfo(img_push_request = depset([request])),
    ]

image_push = rule(
    implementation = _image_push_impl,
    attrs = {
        "content": attr.string(mandatory = True),
        "delay_seconds": attr.int(default = 0, doc = "Seconds the image action sleeps, to keep a build running."),
        "repository": attr.string(mandatory = True),
        "strategy": attr.string(default = "bes"),
        "tag": attr.string(default = "latest"),
    },
)
