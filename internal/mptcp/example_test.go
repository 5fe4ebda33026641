package mptcp_test

import (
	"fmt"

	"github.com/mpfleet/mpfleet/internal/mptcp"
)

func ExampleFlags_String() {
	fmt.Println(mptcp.FlagSubflow | mptcp.FlagBackup)
	// Output: subflow backup
}
