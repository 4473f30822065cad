"""image_layer: one deterministic layer blob from files and tars."""

load(":args.bzl", "params_args")
load(":providers.bzl", "ImageLayerInfo")

_EXTENSIONS = {
    "gzip": ".tar.gz",
    "zstd": ".tar.zst",
    "none": ".tar",
}

def _destination(dest, file, many):
    # A destination ending in "/" or a target with several files names a directory,
    # and each file keeps its base name in it.
    if dest.endswith("/") or many:
        return dest.rstrip("/") + "/" + file.basename
    return dest

def _image_layer_impl(ctx):
    blob = ctx.actions.declare_file(ctx.label.name + _EXTENSIONS[ctx.attr.compression])
    metadata = ctx.actions.declare_file(ctx.label.name + ".layer.json")

    args = params_args(ctx)
    args.add("--output", blob)
    args.add("--metadata", metadata)
    args.add("--compression", ctx.attr.compression)
    args.add("--default-owner", ctx.attr.default_owner)

    inputs = []
    for target, dest in ctx.attr.files.items():
        files = target.files.to_list()
        if not files:
            fail("%s: files entry %s for %s has no files" % (ctx.label, target.label, dest))
        for f in files:
            args.add("--file", "%s=%s" % (_destination(dest, f, len(files) > 1), f.path))
            inputs.append(f)
    for dest, mode in ctx.attr.modes.items():
        args.add("--mode", "%s=%s" % (dest, mode))
    for dest, owner in ctx.attr.owners.items():
        args.add("--owner", "%s=%s" % (dest, owner))
    for link, target in ctx.attr.symlinks.items():
        args.add("--symlink", "%s=%s" % (link, target))
    for f in ctx.files.tars:
        args.add("--tar", f)
        inputs.append(f)

    ctx.actions.run(
        executable = ctx.executable._img,
        arguments = [ctx.actions.args().add("layer"), args],
        inputs = inputs,
        outputs = [blob, metadata],
        mnemonic = "ImageLayer",
        progress_message = "Building image layer %s" % ctx.label,
    )
    return [
        DefaultInfo(files = depset([blob])),
        ImageLayerInfo(blob = blob, metadata = metadata),
        OutputGroupInfo(img_metadata = depset([metadata])),
    ]

image_layer = rule(
    implementation = _image_layer_impl,
    doc = """Builds one layer blob: files sorted by destination, then the entries of each tar,
with parent directories added, timestamps at the Unix epoch and fixed owners. The same
inputs give the same digest on every machine.""",
    attrs = {
        "files": attr.label_keyed_string_dict(
            allow_files = True,
            doc = "Files to add, mapped to their destination in the image, such as {\":server\": \"/app/server\"}. " +
                  "A destination ending in \"/\", or a target with several files, is a directory that receives each file by its base name.",
        ),
        "symlinks": attr.string_dict(
            doc = "Symbolic links to add, link path to target, such as {\"/usr/bin/app\": \"/app/bin/app\"}. Sorted together with the files.",
        ),
        "tars": attr.label_list(
            allow_files = [".tar", ".tar.gz", ".tgz", ".tar.zst"],
            doc = "Tar files whose entries are copied after the files, with their owners and modes.",
        ),
        "modes": attr.string_dict(
            doc = "Permission bits per destination, such as {\"/app/server\": \"0755\"}. Default: 0755 for executable sources, else 0644.",
        ),
        "owners": attr.string_dict(
            doc = "Owner UID:GID per destination, such as {\"/app/data\": \"1000:1000\"}.",
        ),
        "default_owner": attr.string(
            default = "0:0",
            doc = "Owner UID:GID of files without an owners entry and of created directories.",
        ),
        "compression": attr.string(
            default = "gzip",
            values = ["gzip", "zstd", "none"],
            doc = "Layer compression.",
        ),
        "_img": attr.label(
            default = Label("//img/settings:img_tool"),
            executable = True,
            cfg = "exec",
        ),
    },
)
