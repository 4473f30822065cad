"""Command lines of the img actions."""

def params_args(ctx):
    """Returns an Args for an img subcommand's flags, written to a params file.

    A layer of many files or a push request of many blobs can exceed the system's
    command-line limit, so the flags always go to a file, one per line, passed as @FILE.
    Always, rather than only when long, so that the one path every build takes is the
    one the tests run.
    """
    args = ctx.actions.args()
    args.use_param_file("@%s", use_always = True)
    args.set_param_file_format("multiline")
    return args
