package proc

import (
	"fmt"
	"path/filepath"
	"strings"
)

// deletedSuffix is what the kernel appends to /proc/<pid>/exe when the
// executable was replaced or removed after the process started (an upgrade).
const deletedSuffix = " (deleted)"

// isBaseName reports whether comm is one of BaseNames.
func isBaseName(comm string) bool {
	switch comm {
	case "ocp_agentd", "ocp_mgragent", "ocp_monagent":
		return true
	}
	return false
}

// cleanExe strips a " (deleted)" suffix and cleans the path.
func cleanExe(exe string) string {
	exe = strings.TrimSuffix(exe, deletedSuffix)
	if exe == "" {
		return ""
	}
	return filepath.Clean(exe)
}

// installHomes returns the cleaned install home and, when it differs, the
// same directory with symlinks resolved (the kernel reports resolved paths).
// The home must be absolute.
func installHomes(home string) ([]string, error) {
	if home == "" {
		return nil, fmt.Errorf("install home is empty")
	}
	if !filepath.IsAbs(home) {
		return nil, fmt.Errorf("install home %q is not an absolute path", home)
	}
	h := filepath.Clean(home)
	homes := []string{h}
	if r, err := filepath.EvalSymlinks(h); err == nil && r != h {
		homes = append(homes, r)
	}
	return homes, nil
}

// underHome reports whether the cleaned exe lies strictly under one of homes.
// The check is on a path prefix with a trailing separator, so
// /home/admin/ocp_agent2/bin/x is not under /home/admin/ocp_agent.
func underHome(homes []string, exe string) bool {
	if exe == "" || !filepath.IsAbs(exe) {
		return false
	}
	for _, h := range homes {
		prefix := h
		if !strings.HasSuffix(prefix, string(filepath.Separator)) {
			prefix += string(filepath.Separator)
		}
		if strings.HasPrefix(exe, prefix) {
			return true
		}
	}
	return false
}

// classify decides what a process with the given comm and raw exe (as read
// from /proc/<pid>/exe) is: not a base process at all, a base process under
// the install home (to stop), or a base process elsewhere (to leave alone).
// exe is returned cleaned, without a " (deleted)" suffix.
func classify(homes []string, comm, rawExe string) (exe string, base, inHome bool) {
	if !isBaseName(comm) {
		return "", false, false
	}
	exe = cleanExe(rawExe)
	return exe, true, underHome(homes, exe)
}
