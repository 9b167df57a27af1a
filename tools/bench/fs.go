package bench

import (
	"fmt"
	"path/filepath"
	"syscall"
)

// filesystem names the kind of filesystem dir is on (or would be, for a
// folder not made yet), from statfs(2)'s magic number: what ClickHouse's
// data sits on weighs on its CPU.
func filesystem(dir string) string {
	var st syscall.Statfs_t
	for syscall.Statfs(dir, &st) != nil {
		up := filepath.Dir(dir)
		if up == dir {
			return "an unknown filesystem"
		}
		dir = up
	}
	switch uint32(st.Type) {
	case 0xef53:
		return "ext4"
	case 0x01021994:
		return "tmpfs"
	case 0x58465342:
		return "xfs"
	case 0x9123683e:
		return "btrfs"
	case 0x794c7630:
		return "overlayfs"
	}
	return fmt.Sprintf("filesystem %#x", uint32(st.Type))
}
