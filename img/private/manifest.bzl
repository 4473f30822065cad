"""image_manifest and image_index: configs, manifests and indexes."""

load(":args.bzl", "params_args")
load(":providers.bzl", "ImageInfo", "ImageLayerInfo")

def _base_inputs(ctx, args):
    """Adds the base image flags and returns (inputs, blobs, metadata_blobs, graphs) of the base."""
    base = ctx.attr.base
    if base == None:
        return [], [], [], []

    if ImageInfo in base:
        info = base[ImageInfo]
        if info.kind != "manifest":
            fail("%s: base %s is an index; use one of its platform manifests" % (ctx.label, base.label))
        args.add("--base-metadata", info.graph)
        return [info.graph, info.config], [info.blobs], [info.metadata_blobs], [info.graphs]

    # Otherwise the base is the files of an OCI layout checked into the workspace.
    files = base.files.to_list()
    layout_markers = [f for f in files if f.basename == "oci-layout"]
    if len(layout_markers) != 1:
        fail("%s: base %s must be an image_manifest or the files of one OCI layout (with exactly one oci-layout file); found %d oci-layout files" % (ctx.label, base.label, len(layout_markers)))
    args.add("--base-layout", layout_markers[0].dirname)
    return files, [base.files], [base.files], []

def _image_manifest_impl(ctx):
    config = ctx.actions.declare_file(ctx.label.name + ".config.json")
    manifest = ctx.actions.declare_file(ctx.label.name + ".manifest.json")
    graph = ctx.actions.declare_file(ctx.label.name + ".image.json")

    args = params_args(ctx)
    args.add("--config-output", config)
    args.add("--manifest-output", manifest)
    args.add("--metadata", graph)
    inputs, blobs, metadata_blobs, graphs = _base_inputs(ctx, args)

    layer_blobs = []
    for layer in ctx.attr.layers:
        info = layer[ImageLayerInfo]
        args.add("--layer", info.metadata)
        inputs.append(info.metadata)
        layer_blobs.append(info.blob)

    if ctx.attr.entrypoint:
        args.add("--entrypoint", json.encode(ctx.attr.entrypoint))
    if ctx.attr.cmd:
        args.add("--cmd", json.encode(ctx.attr.cmd))
    for key, value in ctx.attr.env.items():
        args.add("--env", "%s=%s" % (key, value))
    if ctx.attr.workdir:
        args.add("--workdir", ctx.attr.workdir)
    if ctx.attr.user:
        args.add("--user", ctx.attr.user)
    for key, value in ctx.attr.labels.items():
        args.add("--label", "%s=%s" % (key, value))
    for port in ctx.attr.exposed_ports:
        args.add("--expose", port)
    for key, value in ctx.attr.annotations.items():
        args.add("--annotation", "%s=%s" % (key, value))
    args.add("--os", ctx.attr.os)
    args.add("--architecture", ctx.attr.architecture)
    if ctx.attr.variant:
        args.add("--variant", ctx.attr.variant)

    ctx.actions.run(
        executable = ctx.executable._img,
        arguments = [ctx.actions.args().add("manifest"), args],
        inputs = inputs,
        outputs = [config, manifest, graph],
        mnemonic = "ImageManifest",
        progress_message = "Building image manifest %s" % ctx.label,
    )
    own = [manifest, config]
    return [
        DefaultInfo(files = depset(own)),
        ImageInfo(
            kind = "manifest",
            root = manifest,
            config = config,
            graph = graph,
            blobs = depset(own + layer_blobs, transitive = blobs),
            metadata_blobs = depset(own, transitive = metadata_blobs),
            graphs = depset([graph], transitive = graphs),
        ),
        OutputGroupInfo(img_metadata = depset([graph])),
    ]

_IMG_TOOL = attr.label(
    default = Label("//img/settings:img_tool"),
    executable = True,
    cfg = "exec",
)

image_manifest = rule(
    implementation = _image_manifest_impl,
    doc = "Builds an OCI image config and manifest from an optional base image and layers.",
    attrs = {
        "base": attr.label(
            allow_files = True,
            doc = "Base image: another image_manifest, or the files of an OCI layout checked into the workspace " +
                  "(for example a filegroup of glob([\"base/**\"])). An index in the layout is narrowed to os/architecture/variant. " +
                  "Empty builds from scratch.",
        ),
        "layers": attr.label_list(
            providers = [ImageLayerInfo],
            doc = "image_layer targets, added on top of the base in order.",
        ),
        "entrypoint": attr.string_list(doc = "Entrypoint; empty keeps the base's."),
        "cmd": attr.string_list(doc = "Default arguments; empty keeps the base's."),
        "env": attr.string_dict(doc = "Environment variables; a key the base sets is replaced."),
        "workdir": attr.string(doc = "Working directory; empty keeps the base's."),
        "user": attr.string(doc = "User as NAME, UID or UID:GID; empty keeps the base's."),
        "labels": attr.string_dict(doc = "Config labels, merged over the base's."),
        "exposed_ports": attr.string_list(doc = "Exposed ports as PORT or PORT/PROTOCOL."),
        "annotations": attr.string_dict(doc = "Manifest annotations."),
        "os": attr.string(default = "linux", doc = "Operating system."),
        "architecture": attr.string(default = "amd64", doc = "CPU architecture in GOARCH names."),
        "variant": attr.string(doc = "CPU variant, such as v8."),
        "_img": _IMG_TOOL,
    },
)

def _image_index_impl(ctx):
    index = ctx.actions.declare_file(ctx.label.name + ".index.json")
    graph = ctx.actions.declare_file(ctx.label.name + ".image.json")

    args = params_args(ctx)
    args.add("--output", index)
    args.add("--metadata", graph)
    inputs = []
    for manifest in ctx.attr.manifests:
        info = manifest[ImageInfo]
        args.add("--manifest", info.graph)
        inputs.append(info.graph)
    for key, value in ctx.attr.annotations.items():
        args.add("--annotation", "%s=%s" % (key, value))

    ctx.actions.run(
        executable = ctx.executable._img,
        arguments = [ctx.actions.args().add("index"), args],
        inputs = inputs,
        outputs = [index, graph],
        mnemonic = "ImageIndex",
        progress_message = "Building image index %s" % ctx.label,
    )
    children = [m[ImageInfo] for m in ctx.attr.manifests]
    return [
        DefaultInfo(files = depset([index])),
        ImageInfo(
            kind = "index",
            root = index,
            config = None,
            graph = graph,
            blobs = depset([index], transitive = [c.blobs for c in children]),
            metadata_blobs = depset([index], transitive = [c.metadata_blobs for c in children]),
            graphs = depset([graph], transitive = [c.graphs for c in children]),
        ),
        OutputGroupInfo(img_metadata = depset([graph])),
    ]

image_index = rule(
    implementation = _image_index_impl,
    doc = "Builds an OCI image index over image_manifest targets, one per platform, in the order given.",
    attrs = {
        "manifests": attr.label_list(
            mandatory = True,
            allow_empty = False,
            providers = [ImageInfo],
            doc = "image_manifest (or image_index) targets.",
        ),
        "annotations": attr.string_dict(doc = "Index annotations."),
        "_img": _IMG_TOOL,
    },
)
