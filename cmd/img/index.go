package main

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/rulesimg/img/assemble"
	"github.com/rulesimg/img/image"
)

// indexFlags are the flags of `img index`, which the image_index rule runs.
type indexFlags struct {
	manifests   []string
	annotations []string
	output      string
	metadata    string
}

func init() {
	var flags indexFlags
	cmd := &cobra.Command{
		Use:   "index --output FILE --metadata FILE --manifest JSON...",
		Short: "Build an OCI image index over several platform manifests",
		Long: `Build an OCI image index that lists each manifest with its platform, in the
order given. Writes the index blob and an image graph like 'img manifest' does.`,
		Args: bazelParamFile,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runIndex(flags)
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&flags.manifests, "manifest", nil, "metadata file of a manifest or index from 'img manifest' or 'img index' (repeatable, at least one)")
	f.StringArrayVar(&flags.annotations, "annotation", nil, "index annotation KEY=VALUE (repeatable)")
	f.StringVar(&flags.output, "output", "", "path of the index blob to write (required)")
	f.StringVar(&flags.metadata, "metadata", "", "path of the image graph JSON to write (required)")
	cmd.MarkFlagRequired("manifest")
	cmd.MarkFlagRequired("output")
	cmd.MarkFlagRequired("metadata")
	rootCmd.AddCommand(cmd)
}

func runIndex(flags indexFlags) error {
	annotations, err := parseKeyValues("--annotation", flags.annotations)
	if err != nil {
		return err
	}
	var children []*image.Request
	for _, path := range flags.manifests {
		child, err := assemble.ReadGraph(path)
		if err != nil {
			return err
		}
		children = append(children, child)
	}

	body, graph, err := assemble.BuildIndex(children, annotations, flags.output)
	if err != nil {
		return err
	}
	if err := os.WriteFile(flags.output, body, 0o644); err != nil {
		return err
	}
	return assemble.WriteGraph(flags.metadata, graph)
}
