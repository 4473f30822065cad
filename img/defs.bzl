"""Public API of rules_img: build container images and push them with img.

    load("@rules_img//img:defs.bzl", "image_layer", "image_manifest", "image_index", "image_push")
"""

load("//img/private:layer.bzl", _image_layer = "image_layer")
load("//img/private:manifest.bzl", _image_index = "image_index", _image_manifest = "image_manifest")
load("//img/private:providers.bzl", _ImageInfo = "ImageInfo", _ImageLayerInfo = "ImageLayerInfo", _ImgSettingInfo = "ImgSettingInfo")
load("//img/private:push.bzl", _image_push = "image_push")
load("//img/private:settings.bzl", _string_flag = "string_flag", _string_setting = "string_setting")
load("//img/private:tool.bzl", _img_binary = "img_binary")

image_layer = _image_layer
image_manifest = _image_manifest
image_index = _image_index
image_push = _image_push
img_binary = _img_binary
string_flag = _string_flag
string_setting = _string_setting

ImageInfo = _ImageInfo
ImageLayerInfo = _ImageLayerInfo
ImgSettingInfo = _ImgSettingInfo
