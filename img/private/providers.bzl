"""Providers that the image rules pass between each other."""

ImageLayerInfo = provider(
    doc = "A layer blob built by image_layer.",
    fields = {
        "blob": "File: the compressed layer; its OCI digest is its remote-cache digest.",
        "metadata": "File: JSON with the layer's descriptor and diff ID, written by `img layer`.",
    },
)

ImageInfo = provider(
    doc = "An image manifest or index built by image_manifest or image_index.",
    fields = {
        "kind": "\"manifest\" or \"index\".",
        "root": "File: the manifest or index blob.",
        "config": "File or None: the config blob of a manifest.",
        "graph": "File: the image graph, a push request with paths relative to the execution root.",
        "blobs": "depset of File: every blob file the image reaches: layers, configs, manifests, indexes and base layout files.",
        "metadata_blobs": "depset of File: the blob files a lazy push still reads locally: manifests, indexes, configs and base layout files.",
        "graphs": "depset of File: the graph files of this image and the images it is built from.",
    },
)

ImgSettingInfo = provider(
    doc = "The value of a string build setting of rules_img.",
    fields = {"value": "string: the setting's value."},
)
