package proc

import "os"

// InstallHomeMissing reports whether the OCP Agent's install home home is
// absent (or not a directory): no OCP Agent is installed there, so nothing
// under it can run. A home agentd may not look into is not missing: the
// error shows when it scans.
func InstallHomeMissing(home string) bool {
	fi, err := os.Stat(home)
	if err != nil {
		return os.IsNotExist(err)
	}
	return !fi.IsDir()
}
