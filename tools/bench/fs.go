package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// filesystem names the kind of filesystem dir is on (or would be, for a
// folder not made yet), from statfs(2)'s magic number, and says so when
// it is ext4 without a journal: what ClickHouse's data sits on weighs on
// its CPU (docs/performance.md, the filesystem under ClickHouse).
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
		if journaled, known := ext4Journaled("/sys", dir); known && !journaled {
			return "ext4 without a journal"
		}
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

// ext4Journaled says whether the ext4 filesystem that holds dir has a
// journal, from sysfs (sys): the block device of dir's device number,
// and that device's journal thread, "<none>" without one. known is false
// where sysfs does not say.
func ext4Journaled(sys, dir string) (journaled, known bool) {
	var st syscall.Stat_t
	if syscall.Stat(dir, &st) != nil {
		return false, false
	}
	dev, err := filepath.EvalSymlinks(filepath.Join(sys, "dev", "block", fmt.Sprintf("%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev))))
	if err != nil {
		return false, false
	}
	task, err := os.ReadFile(filepath.Join(sys, "fs", "ext4", filepath.Base(dev), "journal_task"))
	if err != nil {
		return false, false
	}
	return strings.TrimSpace(string(task)) != "<none>", true
}
