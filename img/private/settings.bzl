"""String build settings with an optional list of allowed values."""

load(":providers.bzl", "ImgSettingInfo")

def _string_setting_impl(ctx):
    value = ctx.build_setting_value
    if ctx.attr.values and value not in ctx.attr.values:
        fail("%s is %r; expected one of %s" % (ctx.label, value, ", ".join(ctx.attr.values)))
    return [ImgSettingInfo(value = value)]

_ATTRS = {
    "values": attr.string_list(doc = "Allowed values; empty allows any string."),
}

string_flag = rule(
    implementation = _string_setting_impl,
    build_setting = config.string(flag = True),
    attrs = _ATTRS,
    doc = "A string setting that can be set on the command line as --//pkg:name=value.",
)

string_setting = rule(
    implementation = _string_setting_impl,
    build_setting = config.string(flag = False),
    attrs = _ATTRS,
    doc = "A string setting that only transitions can change.",
)

def _bool_value_impl(ctx):
    return [ImgSettingInfo(value = ctx.attr.value)]

bool_value = rule(
    implementation = _bool_value_impl,
    attrs = {"value": attr.bool()},
    doc = "Forwards a boolean chosen by select(), for example whether --stamp is set.",
)
