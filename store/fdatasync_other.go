//go:build !linux

package store

import (
	"errors"
	"os"
)

func fdatasync(f *os.File) error { return f.Sync() }

func preallocate(*os.File, int64, int64) error { return errors.New("preallocation not supported") }
