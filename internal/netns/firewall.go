package netns

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha512"
	"errors"
	"fmt"
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

// FirewallChain is the filter chain holding the rules of identity: BOTTLE-<owner>-<6 hex>.
func (m *Manager) FirewallChain(identity string) string {
	return chainPrefix + m.owner.ID + "-" + identityHash(identity)[:6]
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

// InstallFirewall isolates the internal network of identity on the host (IPv4 and IPv6):
// nothing is forwarded from or to its bridge (other than between its own ports when
// br_netfilter hands bridged frames to iptables), nothing it sends reaches the host (INPUT),
// and the host sends nothing into it (OUTPUT). The rules live in chain FirewallChain,
// jumped to from the top of FORWARD, INPUT and OUTPUT, so removal is exact. Interfaces are
// matched by name, so install it before the bridge exists (before the first Setup).
// Idempotent.
func (m *Manager) InstallFirewall(ctx context.Context, identity string, internal Network) error {
	if err := ValidateIdentity(identity); err != nil {
		return err
	}
	if want, _, _ := m.BottleNetworks(identity, 0, DefaultPool); internal.Egress || internal.Bridge != want.Bridge {
		return fmt.Errorf("install firewall of bottle %s: network %s (bridge %q) is not its internal network (want bridge %s; use BottleNetworks)", identity, internal.Name, internal.Bridge, want.Bridge)
	}
	fams, err := families()
	if err != nil {
		return fmt.Errorf("install firewall of bottle %s: %w", identity, err)
	}
	chain := m.FirewallChain(identity)
	errs := make([]error, len(fams))
	var wg sync.WaitGroup
	for i, t := range fams {
		wg.Go(func() {
			if err := installFamily(ctx, t, internal.Bridge, chain); err != nil {
				errs[i] = fmt.Errorf("install firewall of bottle %s (%s chain %s): %w", identity, t.bin, chain, err)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return errors.Join(err, m.RemoveFirewall(context.WithoutCancel(ctx), identity))
	}
	return nil
}

// installFamily writes the chain and the jumps to it in one iptables-restore
// transaction: the chain is filled before anything jumps to it, so it never passes
// traffic half-built, and a failure changes nothing.
func installFamily(ctx context.Context, t ipt, bridge, chain string) error {
	lines, err := t.rules(ctx, "filter", "")
	if err != nil {
		return err
	}
	have := map[string]bool{}
	for _, l := range lines {
		have[l] = true
	}
	var script strings.Builder
	script.WriteString("*filter\n")
	if have["-N "+chain] {
		script.WriteString("-F " + chain + "\n")
	} else {
		script.WriteString(":" + chain + " - [0:0]\n")
	}
	script.WriteString("-A " + chain + " -i " + bridge + " -o " + bridge + " -j ACCEPT\n")
	script.WriteString("-A " + chain + " -j DROP\n")
	for _, j := range jumps(bridge, chain) {
		if have["-A "+strings.Join(j, " ")] {
			continue
		}
		script.WriteString("-I " + j[0] + " 1 " + strings.Join(j[1:], " ") + "\n")
	}
	script.WriteString("COMMIT\n")
	return t.restore(ctx, script.String())
}

// RemoveFirewall removes the chain of identity and every jump to it; missing ones are fine.
func (m *Manager) RemoveFirewall(ctx context.Context, identity string) error {
	if err := ValidateIdentity(identity); err != nil {
		return err
	}
	if err := removeChain(ctx, m.FirewallChain(identity)); err != nil {
		return fmt.Errorf("remove firewall of bottle %s: %w", identity, err)
	}
	return nil
}

// removeChain deletes every rule of the built-in filter chains that jumps to chain, then
// flushes and deletes chain, for each family (at once: teardown latency is start latency
// for a user who runs one command after another).
func removeChain(ctx context.Context, chain string) error {
	fams, err := families()
	if err != nil {
		return err
	}
	errs := make([]error, len(fams))
	done := make(chan struct{}, len(fams))
	for i, t := range fams {
		go func() {
			errs[i] = removeChainFamily(ctx, t, "filter", chain, []string{"INPUT", "FORWARD", "OUTPUT"})
			done <- struct{}{}
		}()
	}
	for range fams {
		<-done
	}
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

// masqChain is the bridge plugin's masquerade chain name (plugins pkg/utils.FormatChainName).
func masqChain(network, containerID string) string {
	return fmt.Sprintf("CNI-%x", sha512.Sum512([]byte(network+containerID)))[:28]
}

// removeMasq removes the bridge plugin's masquerade rules of (network, container): the
// POSTROUTING jumps carrying its comment and its CNI-<hash> chain in the nat table.
func removeMasq(ctx context.Context, network, containerID string) error {
	t := ipt{bin: "iptables"}
	if _, err := exec.LookPath(t.bin); err != nil {
		return nil // no iptables, so the plugin cannot have written rules either
	}
	chains := map[string]bool{masqChain(network, containerID): true}
	lines, err := t.rules(ctx, "nat", "POSTROUTING")
	if err != nil {
		return fmt.Errorf("remove masquerade rules of network %s (container %s): %w", network, containerID, err)
	}
	for _, l := range lines {
		// iptables -S prints the comment quoted with escaped inner quotes.
		if m := masqCommentRE.FindStringSubmatch(l); m == nil || m[1] != network || m[2] != containerID {
			continue
		}
		args, target, err := deleteArgs(l)
		if err != nil {
			return fmt.Errorf("remove masquerade rules of network %s (container %s): %w", network, containerID, err)
		}
		if _, err := t.run(ctx, append([]string{"-t", "nat"}, args...)...); err != nil {
			return fmt.Errorf("remove masquerade rules of network %s (container %s): %w", network, containerID, err)
		}
		if strings.HasPrefix(target, "CNI-") {
			chains[target] = true
		}
	}
	for c := range chains {
		if err := removeChainFamily(ctx, t, "nat", c, []string{"POSTROUTING"}); err != nil {
			return fmt.Errorf("remove masquerade chain %s of network %s (container %s): %w", c, network, containerID, err)
		}
	}
	return nil
}

// deleteArgs turns an `iptables -S` line "-A CHAIN ..." into "-D CHAIN ..." arguments,
// honouring the double quotes iptables prints around comments; it also returns the -j target.
func deleteArgs(line string) (args []string, target string, err error) {
	fields, err := splitQuoted(line)
	if err != nil {
		return nil, "", err
	}
	if len(fields) < 2 || fields[0] != "-A" {
		return nil, "", fmt.Errorf("unexpected iptables rule %q", line)
	}
	fields[0] = "-D"
	for i := 0; i+1 < len(fields); i++ {
		if fields[i] == "-j" {
			target = fields[i+1]
		}
	}
	return fields, target, nil
}

// splitQuoted splits an iptables-save style line: fields separated by spaces, "..." quoted
// with backslash escapes.
func splitQuoted(s string) ([]string, error) {
	var out []string
	var cur strings.Builder
	inQuote, escaped, have := false, false, false
	for _, r := range s {
		switch {
		case escaped:
			cur.WriteRune(r)
			escaped = false
		case r == '\\' && inQuote:
			escaped = true
		case r == '"':
			inQuote = !inQuote
			have = true
		case r == ' ' && !inQuote:
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if inQuote || escaped {
		return nil, fmt.Errorf("unbalanced quotes in iptables rule %q", s)
	}
	if have {
		out = append(out, cur.String())
	}
	return out, nil
}

// CheckFirewall reports whether the iptables families bottle programs are usable.
func CheckFirewall(ctx context.Context) ([]string, error) {
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
