//go:build !linux

package filesystem

import "os"

func openDirect(path string) (*os.File, error) { return nil, errNoDirectIO }
