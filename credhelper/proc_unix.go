//go:build unix

package credhelper

import (
	"os/exec"
	"syscall"
)

// startInOwnProcessGroup makes a timeout kill the helper and everything it started, since a
// shell-script helper usually runs its real work in a child process.
func startInOwnProcessGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
}
