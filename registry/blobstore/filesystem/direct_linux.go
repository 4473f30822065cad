package filesystem

import (
	"errors"
	"os"
	"syscall"
)

func openDirect(path string) (*os.File, error) {
	file, err := os.OpenFile(path, os.O_WRONLY|syscall.O_DIRECT, 0)
	if errors.Is(err, syscall.EINVAL) {
		return nil, errNoDirectIO
	}
	return file, err
}
