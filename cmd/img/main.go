// Command img pushes container images built by Bazel to OCI registries, and runs the
// registry and Build Event Service servers that the cas_registry and bes push strategies use.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// rootCmd is the top of the command tree. Each subcommand registers itself in an init
// function of its own file, so adding a command touches only that file.
var rootCmd = &cobra.Command{
	Use:           "img",
	Short:         "Push container images to OCI registries, eagerly or straight from a Bazel remote cache",
	SilenceUsage:  true,
	SilenceErrors: true,
}

func main() {
	if err := rootCmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "img:", err)
		os.Exit(1)
	}
}
