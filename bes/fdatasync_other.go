//go:build !linux

package bes

import "os"

func fdatasync(file *os.File) error {
	return file.Sync()
}
