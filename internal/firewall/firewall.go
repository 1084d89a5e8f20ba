// Package firewall keeps bottle's host firewall: one filter chain per bottle that isolates
// its internal bridge (IPv4 and IPv6), one nat chain of the same name that masquerades its
// egress subnet, and the removal of the masquerade rules the CNI bridge plugin of earlier
// versions left behind.
//
// The filter chain is written with iptables-restore rather than a library (go-iptables
// runs one iptables process per rule): one transaction per family fills the chain before
// anything jumps to it, so it never passes traffic half-built, a failure changes nothing,
// and a bottle's start pays one process per family.
package firewall

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
)

// ipt runs one iptables-family binary.
type ipt struct {
	bin string // "iptables" or "ip6tables"
}

func (t ipt) run(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, t.bin, append([]string{"-w", "5"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w: %s", t.bin, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// restore applies an iptables-restore script without flushing the table.
func (t ipt) restore(ctx context.Context, script string) error {
	bin := t.bin + "-restore"
	cmd := exec.CommandContext(ctx, bin, "-w", "5", "--noflush")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", bin, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// rules returns `iptables -S` lines of table (chain optional).
func (t ipt) rules(ctx context.Context, table, chain string) ([]string, error) {
	args := []string{"-t", table, "-S"}
	if chain != "" {
		args = append(args, chain)
	}
	out, err := t.run(ctx, args...)
	if err != nil {
		return nil, err
	}
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines, nil
}

// families returns the iptables binaries to program. IPv4 is mandatory; IPv6 is programmed
// when the kernel has IPv6, and then ip6tables is mandatory too (fail closed).
func families() ([]ipt, error) {
	if _, err := exec.LookPath("iptables"); err != nil {
		return nil, fmt.Errorf("iptables not found: install iptables (Debian: apt-get install iptables): %w", err)
	}
	out := []ipt{{bin: "iptables"}}
	if _, err := os.Stat("/proc/net/if_inet6"); err != nil {
		return out, nil // no IPv6 in this kernel: nothing to filter
	}
	if _, err := exec.LookPath("ip6tables"); err != nil {
		return nil, fmt.Errorf("ip6tables not found but the kernel has IPv6: install ip6tables (Debian: apt-get install iptables): %w", err)
	}
	return append(out, ipt{bin: "ip6tables"}), nil
}

// jumps are the rules in built-in chains that send the internal bridge's traffic to chain.
func jumps(bridge, chain string) [][]string {
	return [][]string{
		{"FORWARD", "-i", bridge, "-j", chain},
		{"FORWARD", "-o", bridge, "-j", chain},
		{"INPUT", "-i", bridge, "-j", chain},
		{"OUTPUT", "-o", bridge, "-j", chain},
	}
}

// Install isolates bridge, the internal bridge of a bottle, on the host (IPv4 and IPv6):
// nothing is forwarded from or to it (other than between its own ports when br_netfilter
// hands bridged frames to iptables), nothing it sends reaches the host (INPUT), and the
// host sends nothing into it (OUTPUT). The rules live in chain, jumped to from the top of
// FORWARD, INPUT and OUTPUT, so removal is exact. Interfaces are matched by name, so
// install it before the bridge exists. With a valid masq (the bottle's egress subnet),
// the IPv4 nat chain of the same name masquerades what leaves that subnet: one rule for
// the whole bottle, where the bridge plugin's ipMasq writes a chain per container.
// Idempotent; a failure removes what it made.
func Install(ctx context.Context, chain, bridge string, masq netip.Prefix) error {
	fams, err := families()
	if err != nil {
		return err
	}
	errs := make([]error, len(fams))
	var wg sync.WaitGroup
	for i, t := range fams {
		wg.Go(func() {
			if err := installFamily(ctx, t, bridge, chain, masq); err != nil {
				errs[i] = fmt.Errorf("%s chain %s: %w", t.bin, chain, err)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return errors.Join(err, Remove(context.WithoutCancel(ctx), chain))
	}
	return nil
}

// installFamily writes the chain and the jumps to it in one iptables-restore
// transaction: the chain is filled before anything jumps to it, so it never passes
// traffic half-built, and a failure changes nothing.
func installFamily(ctx context.Context, t ipt, bridge, chain string, masq netip.Prefix) error {
	have := map[string]bool{}
	tables := []string{"filter"}
	if masq.IsValid() && t.bin == "iptables" {
		tables = append(tables, "nat")
	}
	for _, table := range tables {
		lines, err := t.rules(ctx, table, "")
		if err != nil {
			return err
		}
		for _, l := range lines {
			have[table+" "+l] = true
		}
	}
	var script strings.Builder
	if len(tables) > 1 {
		masqScript(&script, have, chain, masq)
	}
	script.WriteString("*filter\n")
	if have["filter -N "+chain] {
		script.WriteString("-F " + chain + "\n")
	} else {
		script.WriteString(":" + chain + " - [0:0]\n")
	}
	script.WriteString("-A " + chain + " -i " + bridge + " -o " + bridge + " -j ACCEPT\n")
	script.WriteString("-A " + chain + " -j DROP\n")
	for _, j := range jumps(bridge, chain) {
		if have["filter -A "+strings.Join(j, " ")] {
			continue
		}
		script.WriteString("-I " + j[0] + " 1 " + strings.Join(j[1:], " ") + "\n")
	}
	script.WriteString("COMMIT\n")
	return t.restore(ctx, script.String())
}

// masqScript writes the nat part of installFamily: chain masquerades what leaves subnet
// for anywhere but subnet itself and multicast (as the bridge plugin's chains do), jumped
// to from POSTROUTING for sources in subnet.
func masqScript(script *strings.Builder, have map[string]bool, chain string, subnet netip.Prefix) {
	script.WriteString("*nat\n")
	if have["nat -N "+chain] {
		script.WriteString("-F " + chain + "\n")
	} else {
		script.WriteString(":" + chain + " - [0:0]\n")
	}
	s := subnet.Masked().String()
	script.WriteString("-A " + chain + " -d " + s + " -j RETURN\n")
	script.WriteString("-A " + chain + " -d 224.0.0.0/4 -j RETURN\n")
	script.WriteString("-A " + chain + " -j MASQUERADE\n")
	if jump := "-A POSTROUTING -s " + s + " -j " + chain; !have["nat "+jump] {
		script.WriteString(jump + "\n")
	}
	script.WriteString("COMMIT\n")
}

// Remove deletes every rule of the built-in chains that jumps to chain, then flushes and
// deletes chain, in the filter table of each family and in IPv4's nat table; missing ones
// are fine (at once: teardown latency is start latency for a user who runs one command
// after another).
func Remove(ctx context.Context, chain string) error {
	fams, err := families()
	if err != nil {
		return err
	}
	errs := make([]error, len(fams)+1)
	var wg sync.WaitGroup
	for i, t := range fams {
		wg.Go(func() { errs[i] = removeChainFamily(ctx, t, "filter", chain, []string{"INPUT", "FORWARD", "OUTPUT"}) })
	}
	wg.Go(func() { errs[len(fams)] = removeChainFamily(ctx, fams[0], "nat", chain, []string{"POSTROUTING"}) })
	wg.Wait()
	return errors.Join(errs...)
}

// removeChainFamily lists the table once and removes the jumps and the chain in one
// iptables-restore transaction. A concurrent change (another cleanup removing the same
// rules) fails the transaction; it is then retried on a fresh listing.
func removeChainFamily(ctx context.Context, t ipt, table, chain string, from []string) error {
	var lastErr error
	for range 3 {
		lines, err := t.rules(ctx, table, "")
		if err != nil {
			return err
		}
		var script strings.Builder
		exists := false
		for _, l := range lines {
			f := strings.Fields(l)
			if len(f) == 2 && f[0] == "-N" && f[1] == chain {
				exists = true
			}
			if len(f) < 2 || f[0] != "-A" || !slices.Contains(from, f[1]) || !jumpsTo(f, chain) {
				continue
			}
			script.WriteString("-D" + strings.TrimPrefix(l, "-A") + "\n")
		}
		if exists {
			script.WriteString("-F " + chain + "\n-X " + chain + "\n")
		}
		if script.Len() == 0 {
			return nil
		}
		if lastErr = t.restore(ctx, "*"+table+"\n"+script.String()+"COMMIT\n"); lastErr == nil {
			return nil
		}
	}
	return lastErr
}

func jumpsTo(fields []string, chain string) bool {
	for i := 0; i+1 < len(fields); i++ {
		if (fields[i] == "-j" || fields[i] == "-g") && fields[i+1] == chain {
			return true
		}
	}
	return false
}

// Chains lists the names of the chains bottle programs: the filter chains of every
// family and IPv4's nat chains.
func Chains(ctx context.Context) ([]string, error) {
	fams, err := families()
	if err != nil {
		return nil, err
	}
	var out []string
	var errs []error
	list := func(t ipt, table string) {
		lines, err := t.rules(ctx, table, "")
		if err != nil {
			errs = append(errs, err)
			return
		}
		for _, l := range lines {
			if f := strings.Fields(l); len(f) == 2 && f[0] == "-N" && !slices.Contains(out, f[1]) {
				out = append(out, f[1])
			}
		}
	}
	for _, t := range fams {
		list(t, "filter")
	}
	list(fams[0], "nat")
	return out, errors.Join(errs...)
}

// Check reports whether the iptables families bottle programs are usable.
func Check(ctx context.Context) ([]string, error) {
	fams, err := families()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, t := range fams {
		if _, err := t.rules(ctx, "filter", "INPUT"); err != nil {
			return nil, fmt.Errorf("%s does not work: %w", t.bin, err)
		}
		names = append(names, t.bin)
	}
	return names, nil
}
