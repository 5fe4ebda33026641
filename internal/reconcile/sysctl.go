package reconcile

// NormValue returns a sysctl value the way State holds it and values compare:
// surrounding and repeated white space do not count (the kernel separates
// list values with tabs). A Kernel reports the values it reads so.
func NormValue(v string) string { return normValue(v) }
