package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/rulesimg/img/assemble"
)

// layerFlags are the flags of `img layer`, which the image_layer rule runs.
type layerFlags struct {
	files        []string
	tars         []string
	symlinks     []string
	modes        []string
	owners       []string
	defaultOwner string
	compression  string
	output       string
	metadata     string
}

func init() {
	var flags layerFlags
	cmd := &cobra.Command{
		Use:   "layer --output BLOB --metadata JSON [--file DEST=SRC]... [--tar TAR]...",
		Short: "Build one deterministic layer blob from files and tars",
		Long: `Build one layer blob: the files sorted by destination, then the entries of each
tar in order, with parent directories added, every timestamp set to the Unix epoch
and owners fixed unless given. Writes the blob and a JSON file with its descriptor
and diff ID, which 'img manifest --layer' reads.`,
		Args: bazelParamFile,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runLayer(flags)
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&flags.files, "file", nil, "add file or directory SRC at path DEST in the image, as DEST=SRC (repeatable)")
	f.StringArrayVar(&flags.symlinks, "symlink", nil, "add a symbolic link at LINK pointing to TARGET, as LINK=TARGET such as /usr/bin/app=/app/bin/app (repeatable)")
	f.StringArrayVar(&flags.tars, "tar", nil, "copy the entries of this tar file, plain, gzip or zstd (repeatable)")
	f.StringArrayVar(&flags.modes, "mode", nil, "set the permission bits of DEST, as DEST=OCTAL such as /app/run=0755 (repeatable; default 0755 for executable sources, else 0644)")
	f.StringArrayVar(&flags.owners, "owner", nil, "set the owner of DEST, as DEST=UID:GID (repeatable)")
	f.StringVar(&flags.defaultOwner, "default-owner", "0:0", "owner UID:GID of files without --owner and of created directories")
	f.StringVar(&flags.compression, "compression", assemble.CompressionGzip, "layer compression: gzip, zstd or none")
	f.StringVar(&flags.output, "output", "", "path of the layer blob to write (required)")
	f.StringVar(&flags.metadata, "metadata", "", "path of the JSON metadata to write: descriptor, diff_id, file (required)")
	cmd.MarkFlagRequired("output")
	cmd.MarkFlagRequired("metadata")
	rootCmd.AddCommand(cmd)
}

func runLayer(flags layerFlags) error {
	opts := assemble.LayerOptions{Compression: flags.compression, Tars: flags.tars}
	var err error
	if opts.DefaultUID, opts.DefaultGID, err = parseOwner(flags.defaultOwner); err != nil {
		return fmt.Errorf("--default-owner: %w", err)
	}

	modes := map[string]int64{}
	for _, entry := range flags.modes {
		dest, text, ok := strings.Cut(entry, "=")
		mode, parseErr := strconv.ParseInt(text, 8, 32)
		if !ok || parseErr != nil || mode < 0 || mode > 0o7777 {
			return fmt.Errorf("--mode %q: expected DEST=OCTAL such as /app/run=0755", entry)
		}
		modes[dest] = mode
	}
	owners := map[string][2]int{}
	for _, entry := range flags.owners {
		dest, text, _ := strings.Cut(entry, "=")
		uid, gid, err := parseOwner(text)
		if err != nil {
			return fmt.Errorf("--owner %q: %w", entry, err)
		}
		owners[dest] = [2]int{uid, gid}
	}

	for _, entry := range flags.files {
		dest, src, ok := strings.Cut(entry, "=")
		if !ok || dest == "" || src == "" {
			return fmt.Errorf("--file %q: expected DEST=SRC such as /app/server=bazel-out/k8-fastbuild/bin/server", entry)
		}
		file := assemble.File{Source: src, Path: dest, Mode: -1, UID: -1, GID: -1}
		if mode, ok := modes[dest]; ok {
			file.Mode = mode
			delete(modes, dest)
		}
		if owner, ok := owners[dest]; ok {
			file.UID, file.GID = owner[0], owner[1]
			delete(owners, dest)
		}
		opts.Files = append(opts.Files, file)
	}
	for _, entry := range flags.symlinks {
		link, target, ok := strings.Cut(entry, "=")
		if !ok || link == "" || target == "" {
			return fmt.Errorf("--symlink %q: expected LINK=TARGET such as /usr/bin/app=/app/bin/app", entry)
		}
		if opts.Symlinks == nil {
			opts.Symlinks = map[string]string{}
		}
		opts.Symlinks[link] = target
	}
	for dest := range modes {
		return fmt.Errorf("--mode names %s, which no --file adds", dest)
	}
	for dest := range owners {
		return fmt.Errorf("--owner names %s, which no --file adds", dest)
	}

	meta, err := assemble.WriteLayerFile(flags.output, opts)
	if err != nil {
		return err
	}
	return assemble.WriteJSON(flags.metadata, meta)
}

func parseOwner(text string) (int, int, error) {
	uidText, gidText, ok := strings.Cut(text, ":")
	uid, uidErr := strconv.Atoi(uidText)
	gid, gidErr := strconv.Atoi(gidText)
	if !ok || uidErr != nil || gidErr != nil || uid < 0 || gid < 0 {
		return 0, 0, fmt.Errorf("owner %q: expected UID:GID with numbers, such as 1000:1000", text)
	}
	return uid, gid, nil
}

// bazelParamFile accepts Bazel's params file in place of the flags. When a command line
// is too long, Bazel writes the arguments to a file, one per line (the "multiline"
// format), and passes "@FILE". It runs as the command's Args check, because cobra checks
// required flags after that and before RunE.
func bazelParamFile(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	if len(args) > 1 || !strings.HasPrefix(args[0], "@") {
		return fmt.Errorf("unexpected arguments %q; %s takes flags only, or a single @PARAMS_FILE", args, cmd.CommandPath())
	}
	body, err := os.ReadFile(strings.TrimPrefix(args[0], "@"))
	if err != nil {
		return fmt.Errorf("params file: %w", err)
	}
	lines := strings.Split(strings.TrimSuffix(string(body), "\n"), "\n")
	if err := cmd.Flags().Parse(lines); err != nil {
		return fmt.Errorf("params file %s: %w", args[0][1:], err)
	}
	if rest := cmd.Flags().Args(); len(rest) > 0 {
		return fmt.Errorf("params file %s: unexpected arguments %q", args[0][1:], rest)
	}
	return nil
}
