package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/rulesimg/img/assemble"
)

// manifestFlags are the flags of `img manifest`, which the image_manifest rule runs.
type manifestFlags struct {
	baseLayout     string
	baseGraph      string
	layers         []string
	entrypoint     string
	cmd            string
	env            []string
	workdir        string
	user           string
	labels         []string
	exposedPorts   []string
	os             string
	architecture   string
	variant        string
	annotations    []string
	configOutput   string
	manifestOutput string
	metadata       string
}

func init() {
	var flags manifestFlags
	cmd := &cobra.Command{
		Use:   "manifest --config-output FILE --manifest-output FILE --metadata FILE [--layer JSON]...",
		Short: "Build an image config and OCI manifest from a base image and layers",
		Long: `Build an OCI image config and manifest. The base is an OCI layout directory
(--base-layout) or another manifest's metadata (--base-metadata), or none for an
image from scratch. The metadata written is an image graph: a push request with
strategy eager, no destinations, and paths relative to the metadata file, so img push
can push it from any folder.`,
		Args: bazelParamFile,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runManifest(cmd, flags)
		},
	}
	f := cmd.Flags()
	f.StringVar(&flags.baseLayout, "base-layout", "", "OCI image layout directory of the base image; an index in it is narrowed to --os/--architecture/--variant")
	f.StringVar(&flags.baseGraph, "base-metadata", "", "metadata file of another 'img manifest' run to use as the base image")
	f.StringArrayVar(&flags.layers, "layer", nil, "metadata file of a layer from 'img layer', added on top of the base in order (repeatable)")
	f.StringVar(&flags.entrypoint, "entrypoint", "", `entrypoint as a JSON array of strings, such as '["/app/server"]'; '[]' clears the base's (default: the base's)`)
	f.StringVar(&flags.cmd, "cmd", "", `default arguments as a JSON array of strings; '[]' clears the base's (default: the base's)`)
	f.StringArrayVar(&flags.env, "env", nil, "environment variable KEY=VALUE, replacing the base's value for KEY (repeatable)")
	f.StringVar(&flags.workdir, "workdir", "", "working directory (default: the base's)")
	f.StringVar(&flags.user, "user", "", "user, as NAME, UID or UID:GID (default: the base's)")
	f.StringArrayVar(&flags.labels, "label", nil, "config label KEY=VALUE (repeatable)")
	f.StringArrayVar(&flags.exposedPorts, "expose", nil, "exposed port, as PORT or PORT/PROTOCOL; tcp when no protocol is given (repeatable)")
	f.StringVar(&flags.os, "os", "", "operating system of the image (default: the base's, else linux)")
	f.StringVar(&flags.architecture, "architecture", "", "CPU architecture of the image, in Go's GOARCH names (default: the base's, else amd64)")
	f.StringVar(&flags.variant, "variant", "", "CPU variant, such as v8 for arm64 (default: the base's)")
	f.StringArrayVar(&flags.annotations, "annotation", nil, "manifest annotation KEY=VALUE (repeatable)")
	f.StringVar(&flags.configOutput, "config-output", "", "path of the config blob to write (required)")
	f.StringVar(&flags.manifestOutput, "manifest-output", "", "path of the manifest blob to write (required)")
	f.StringVar(&flags.metadata, "metadata", "", "path of the image graph JSON to write (required)")
	for _, name := range []string{"config-output", "manifest-output", "metadata"} {
		cmd.MarkFlagRequired(name)
	}
	rootCmd.AddCommand(cmd)
}

func runManifest(cmd *cobra.Command, flags manifestFlags) error {
	opts := assemble.ManifestOptions{
		Config: assemble.ConfigOptions{
			Env:          flags.env,
			WorkingDir:   flags.workdir,
			User:         flags.user,
			ExposedPorts: flags.exposedPorts,
			OS:           flags.os,
			Architecture: flags.architecture,
			Variant:      flags.variant,
		},
	}
	var err error
	if opts.Config.Entrypoint, err = parseStringArray("--entrypoint", flags.entrypoint); err != nil {
		return err
	}
	if opts.Config.Cmd, err = parseStringArray("--cmd", flags.cmd); err != nil {
		return err
	}
	if opts.Config.Labels, err = parseKeyValues("--label", flags.labels); err != nil {
		return err
	}
	if opts.Annotations, err = parseKeyValues("--annotation", flags.annotations); err != nil {
		return err
	}
	for _, entry := range flags.env {
		if key, _, ok := strings.Cut(entry, "="); !ok || key == "" {
			return fmt.Errorf("--env %q: expected KEY=VALUE", entry)
		}
	}

	switch {
	case flags.baseLayout != "" && flags.baseGraph != "":
		return fmt.Errorf("--base-layout and --base-metadata are both set; an image has one base, so give one of them")
	case flags.baseLayout != "":
		os, arch := flags.os, flags.architecture
		if os == "" {
			os = "linux"
		}
		if arch == "" {
			arch = "amd64"
		}
		if opts.Base, err = assemble.LoadBaseLayout(flags.baseLayout, os, arch, flags.variant); err != nil {
			return err
		}
	case flags.baseGraph != "":
		if opts.Base, err = assemble.LoadBaseGraph(flags.baseGraph); err != nil {
			return err
		}
	}

	for _, path := range flags.layers {
		layer, err := assemble.ReadLayerMetadata(path)
		if err != nil {
			return err
		}
		opts.Layers = append(opts.Layers, layer)
	}

	built, err := assemble.BuildManifest(opts)
	if err != nil {
		return err
	}
	if err := os.WriteFile(flags.configOutput, built.Config, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(flags.manifestOutput, built.Manifest, 0o644); err != nil {
		return err
	}
	return assemble.WriteGraph(flags.metadata, built.Graph(flags.manifestOutput, flags.configOutput, opts))
}

// parseStringArray decodes a JSON array flag. An empty flag returns nil, which keeps
// the base's value; "[]" returns an empty slice, which clears it.
func parseStringArray(flag, text string) ([]string, error) {
	if text == "" {
		return nil, nil
	}
	values := []string{}
	if err := json.Unmarshal([]byte(text), &values); err != nil {
		return nil, fmt.Errorf("%s %q: expected a JSON array of strings such as '[\"/app/server\", \"--port=8080\"]': %w", flag, text, err)
	}
	return values, nil
}

func parseKeyValues(flag string, entries []string) (map[string]string, error) {
	if len(entries) == 0 {
		return nil, nil
	}
	values := map[string]string{}
	for _, entry := range entries {
		key, value, ok := strings.Cut(entry, "=")
		if !ok || key == "" {
			return nil, fmt.Errorf("%s %q: expected KEY=VALUE", flag, entry)
		}
		values[key] = value
	}
	return values, nil
}
