//go:build !unix

package credhelper

import "os/exec"

// startInOwnProcessGroup leaves the default: a timeout kills the helper process only.
func startInOwnProcessGroup(cmd *exec.Cmd) {}
