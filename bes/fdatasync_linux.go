package bes

import (
	"os"
	"syscall"
)

// fdatasync flushes file's data without the metadata that reading it back does not need,
// such as its modification time.
func fdatasync(file *os.File) error {
	return syscall.Fdatasync(int(file.Fd()))
}
