package main

import (
	"bytes"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/rulesimg/img/assemble"
)

// requestFlags are the flags of `img request`, which the image_push rule runs.
type requestFlags struct {
	graph          string
	strategy       string
	registry       string
	repository     string
	tags           []string
	vars           []string
	stableStatus   string
	volatileStatus string
	runfiles       []string
	output         string
}

func init() {
	var flags requestFlags
	cmd := &cobra.Command{
		Use:   "request --image JSON --strategy NAME --registry HOST --repository NAME --output FILE",
		Short: "Write the push request for an image_push target",
		Long: `Write the push request (docs/push-request.md) that 'img push --request' reads.
Registry, repository and tags are Go templates over the --var values and, when
status files are given, Bazel's workspace status keys; a template that names a
missing key is an error. File paths in the request are relative to the request's
runfiles directory, so the request works inside the push target's runfiles tree.`,
		Args: bazelParamFile,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runRequest(flags)
		},
	}
	f := cmd.Flags()
	f.StringVar(&flags.graph, "image", "", "image graph file from 'img manifest' or 'img index' (required)")
	f.StringVar(&flags.strategy, "strategy", "", "push strategy: eager, lazy, cas_registry or bes (required)")
	f.StringVar(&flags.registry, "registry", "", "registry host[:port], a template (required)")
	f.StringVar(&flags.repository, "repository", "", "repository name, a template (required)")
	f.StringArrayVar(&flags.tags, "tag", nil, "tag, a template; tags keep the order given (repeatable)")
	f.StringArrayVar(&flags.vars, "var", nil, "template value KEY=VALUE, such as a build setting (repeatable)")
	f.StringVar(&flags.stableStatus, "stable-status", "", "Bazel's stable-status.txt, whose keys become template values")
	f.StringVar(&flags.volatileStatus, "volatile-status", "", "Bazel's volatile-status.txt, whose keys become template values")
	f.StringArrayVar(&flags.runfiles, "runfile", nil, "EXEC_PATH=RUNFILES_PATH for the request file and each blob file (repeatable)")
	f.StringVar(&flags.output, "output", "", "path of the push request to write (required)")
	for _, name := range []string{"image", "strategy", "registry", "repository", "output"} {
		cmd.MarkFlagRequired(name)
	}
	rootCmd.AddCommand(cmd)
}

func runRequest(flags requestFlags) error {
	graph, err := assemble.ReadGraph(flags.graph)
	if err != nil {
		return err
	}

	vars := map[string]string{}
	for _, path := range []string{flags.stableStatus, flags.volatileStatus} {
		if path == "" {
			continue
		}
		if err := assemble.ReadStatusFile(path, vars); err != nil {
			return err
		}
	}
	// Build settings come last so that they win over a status key of the same name.
	for _, entry := range flags.vars {
		key, value, ok := strings.Cut(entry, "=")
		if !ok || key == "" {
			return fmt.Errorf("--var %q: expected KEY=VALUE", entry)
		}
		vars[key] = value
	}
	runfiles := map[string]string{}
	for _, entry := range flags.runfiles {
		execPath, runfile, ok := strings.Cut(entry, "=")
		if !ok || execPath == "" || runfile == "" {
			return fmt.Errorf("--runfile %q: expected EXEC_PATH=RUNFILES_PATH", entry)
		}
		runfiles[execPath] = runfile
	}

	req, err := assemble.BuildRequest(assemble.RequestOptions{
		Graph:         graph,
		Strategy:      flags.strategy,
		Registry:      flags.registry,
		Repository:    flags.repository,
		Tags:          flags.tags,
		Vars:          vars,
		RunfilesPaths: runfiles,
		RequestPath:   flags.output,
	})
	if err != nil {
		return fmt.Errorf("push request %s: %w", flags.output, err)
	}
	var buf bytes.Buffer
	if err := req.Encode(&buf, ""); err != nil {
		return fmt.Errorf("push request %s: %w", flags.output, err)
	}
	return os.WriteFile(flags.output, buf.Bytes(), 0o644)
}
