package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/bottle-dev/bottle/internal/k8s"
	"github.com/bottle-dev/bottle/internal/manifest"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/plan"
	"github.com/bottle-dev/bottle/internal/runtime"
)

// exportFlags are what export and `k8s apply` take besides the cluster's flags.
func exportFlags() []cli.Flag {
	return []cli.Flag{
		manifestFlag(),
		&cli.StringFlag{Name: "sidecar-image", Usage: "registry ref of bottle's sidecar image (see 'bottle image export')"},
		&cli.StringFlag{Name: "runtime-class", Value: k8s.DefaultRuntimeClass, Usage: "RuntimeClass of the agent Pod"},
		&cli.StringFlag{Name: "format", Value: k8s.FormatPod, Usage: "the agent as: " + k8s.FormatPod + " (its own Pod) or " + k8s.FormatAgentSandbox + " (a kubernetes-sigs/agent-sandbox Sandbox whose controller makes that Pod)"},
		&cli.StringFlag{Name: "filter", Usage: "override the allowlist filter: " + strings.Join(manifest.FilterChoices, ", ")},
		&cli.StringSliceFlag{Name: "add-host", Usage: "extra hosts entry NAME:IP for the sidecars that leave the bottle (repeatable)"},
		&cli.StringFlag{Name: "ca-file", Usage: "PEM file of extra CAs the egress-proxy trusts for upstreams (a private CA)"},
		&cli.StringFlag{Name: "pipelock-image", Usage: "pipelock image (overrides the manifest's and the pinned default)"},
	}
}

// exportOptions are the k8s options the flags give (the namespace is the client's).
func exportOptions(c *cli.Context, m *manifest.Manifest, agent string) k8s.Options {
	return k8s.Options{
		Namespace: lineageString(c, "k8s-namespace"), SidecarImage: c.String("sidecar-image"),
		RuntimeClass: c.String("runtime-class"), OptionalEnv: m.Agents[agent].OptionalEnv,
		AgentFormat: c.String("format"),
	}
}

func exportCommand() *cli.Command {
	return &cli.Command{
		Name:         "export",
		Usage:        "print the Kubernetes objects of a bottle (from the plan `bottle start` runs; Secrets without values)",
		ArgsUsage:    "[AGENT]",
		OnUsageError: onUsageError,
		Flags: append(exportFlags(),
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "yaml", Usage: "output format: " + strings.Join(k8s.Formats, ", ")},
			&cli.StringFlag{Name: "k8s-namespace", Usage: "namespace of the objects (default: none, the client's)"}),
		Action: func(c *cli.Context) error {
			format := c.String("output")
			if !slices.Contains(k8s.Formats, format) {
				return usageError{fmt.Errorf("-o %q: use one of %s", format, strings.Join(k8s.Formats, ", "))}
			}
			// Export reads no host secret: not even the SSH keys the bottle names.
			p, po, err := k8sPlan(c, "export", planOptionsWithoutFiles, runtime.ExportPlan)
			if err != nil {
				return err
			}
			objs, err := k8s.Export(p, exportOptions(c, po.Manifest, po.Agent))
			if err != nil {
				return err
			}
			out, err := objs.Render(format)
			if err != nil {
				return err
			}
			_, err = c.App.Writer.Write(out)
			return err
		},
	}
}

// k8sPlan builds the plan of command cmd: its options (planOptions or, for a command
// that reads no host file, planOptionsWithoutFiles), then build (runtime.ExportPlan or
// runtime.ApplyPlan).
func k8sPlan(c *cli.Context, cmd string,
	options func(*cli.Context, string) (runtime.PlanOptions, error),
	build func(context.Context, runtime.Options, runtime.PlanOptions) (*plan.Plan, error),
) (*plan.Plan, runtime.PlanOptions, error) {
	// Both commands take exportFlags: a bad --format is refused before any plan.
	if f := c.String("format"); !slices.Contains(k8s.AgentFormats, f) {
		return nil, runtime.PlanOptions{}, usageError{fmt.Errorf("--format %q: use one of %s", f, strings.Join(k8s.AgentFormats, ", "))}
	}
	po, err := options(c, cmd)
	if err != nil {
		return nil, po, err
	}
	opts, err := engineOptions(c)
	if err != nil {
		return nil, po, err
	}
	p, err := build(c.Context, opts, po)
	if err != nil {
		return nil, po, usageError{err}
	}
	return p, po, nil
}

// k8sClient connects with the k8s command's --kubeconfig and --k8s-namespace.
func k8sClient(c *cli.Context) (*k8s.Client, error) {
	return k8s.Connect(lineageString(c, "kubeconfig"), lineageString(c, "k8s-namespace"))
}

func k8sCommand() *cli.Command {
	return &cli.Command{
		Name:  "k8s",
		Usage: "run bottles on Kubernetes (objects labelled " + names.LabelIdentity + ")",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "kubeconfig", EnvVars: []string{"KUBECONFIG"}, Usage: "kubeconfig file (default: ~/.kube/config, else in-cluster)"},
			&cli.StringFlag{Name: "k8s-namespace", Usage: "namespace (default: the kubeconfig's)"},
		},
		Subcommands: []*cli.Command{{
			Name:         "apply",
			Usage:        "create a bottle: Secrets from this host's env, Services, policies, sidecars, then the agent once they are ready",
			ArgsUsage:    "[AGENT]",
			OnUsageError: onUsageError,
			Flags:        append(exportFlags(), &cli.DurationFlag{Name: "wait", Value: 2 * time.Minute, Usage: "how long the sidecars may take to be ready (0: start the agent without waiting)"}),
			Action: func(c *cli.Context) error {
				p, po, err := k8sPlan(c, "k8s apply", planOptions, runtime.ApplyPlan)
				if err != nil {
					return err
				}
				cl, err := k8sClient(c)
				if err != nil {
					return err
				}
				if err := cl.Apply(c.Context, p, exportOptions(c, po.Manifest, po.Agent), c.Duration("wait")); err != nil {
					return err
				}
				_, err = fmt.Fprintln(c.App.Writer, p.Identity)
				return err
			},
		}, {
			Name:  "ps",
			Usage: "list the bottles' Pods (and each agent Sandbox its controller has made no Pod for)",
			Action: func(c *cli.Context) error {
				cl, err := k8sClient(c)
				if err != nil {
					return err
				}
				pods, err := cl.List(c.Context)
				if err != nil {
					return err
				}
				tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "IDENTITY\tROLE\tPOD\tPHASE\tREADY")
				for _, p := range pods {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%t\n", p.Identity, p.Role, p.Name, p.Phase, p.Ready)
				}
				return tw.Flush()
			},
		}, {
			Name:         "logs",
			Usage:        "print the log of a bottle's Pod",
			ArgsUsage:    "ID",
			OnUsageError: onUsageError,
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "role", Value: names.RoleAgent, Usage: "the Pod's role"},
				&cli.BoolFlag{Name: "follow", Aliases: []string{"f"}, Usage: "follow the log"},
			},
			Action: func(c *cli.Context) error {
				id, err := identityArg(c)
				if err != nil {
					return err
				}
				cl, err := k8sClient(c)
				if err != nil {
					return err
				}
				return cl.Logs(c.Context, id, c.String("role"), c.Bool("follow"), c.App.Writer)
			},
		}, {
			Name:  "doctor",
			Usage: "check the cluster runs bottles safely: the RuntimeClass, the sidecar image, and NetworkPolicy enforced (live: a canary Service, an allowed and a denied probe Pod, all removed after)",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "runtime-class", Value: k8s.DefaultRuntimeClass, Usage: "RuntimeClass of the agent Pods"},
				&cli.StringFlag{Name: "sidecar-image", Value: runtime.PlannedSidecarImage(version), Usage: "registry ref of bottle's sidecar image (the canary runs it)"},
				&cli.DurationFlag{Name: "timeout", Value: 2 * time.Minute, Usage: "how long each doctor Pod may take"},
			},
			Action: func(c *cli.Context) error {
				cl, err := k8sClient(c)
				if err != nil {
					return err
				}
				checks, err := cl.Doctor(c.Context, k8s.DoctorOptions{RuntimeClass: c.String("runtime-class"), SidecarImage: c.String("sidecar-image"), Timeout: c.Duration("timeout")})
				if err != nil {
					return err
				}
				failed := false
				for _, ch := range checks {
					mark := "ok  "
					if !ch.OK {
						mark, failed = "FAIL", true
					}
					fmt.Fprintf(c.App.Writer, "%s %-14s %s\n", mark, ch.Name, ch.Detail)
				}
				if failed {
					return cli.Exit("a check above failed: bottles on this cluster would not be contained", 1)
				}
				return nil
			},
		}, {
			Name:         "rm",
			Usage:        "remove every object of a bottle",
			ArgsUsage:    "ID",
			OnUsageError: onUsageError,
			Action: func(c *cli.Context) error {
				id, err := identityArg(c)
				if err != nil {
					return err
				}
				cl, err := k8sClient(c)
				if err != nil {
					return err
				}
				return cl.Remove(c.Context, id)
			},
		}},
	}
}
