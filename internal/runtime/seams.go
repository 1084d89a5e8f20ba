package runtime

import (
	"context"
	"net/netip"
	"syscall"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/bottle-dev/bottle/internal/ctr"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/netns"
)

// containers is what runtime asks of containerd: the methods of *ctr.Client it uses, so
// the orchestration can be tested with a fake.
type containers interface {
	Close() error
	Ping(ctx context.Context, wait time.Duration) error
	ImageExists(ctx context.Context, ref string) (bool, error)
	ImageConfig(ctx context.Context, ref string) (ocispec.ImageConfig, error)
	EnsureSidecarImage(ctx context.Context, version, hashCache string) (string, error)
	Exists(ctx context.Context, name string) (bool, error)
	Create(ctx context.Context, cs ctr.ContainerSpec) error
	Update(ctx context.Context, cs ctr.ContainerSpec) error
	Spec(ctx context.Context, name string) (*specs.Spec, error)
	SetProcessEnv(ctx context.Context, name string, env []string) error
	Delete(ctx context.Context, name string) error
	Start(ctx context.Context, name, logPath string) (uint32, error)
	Run(ctx context.Context, name string, stdio ctr.IO) (int, error)
	Exec(ctx context.Context, name string, args []string, stdio ctr.IO) (int, error)
	Info(ctx context.Context, name string) (ctr.ContainerInfo, error)
	List(ctx context.Context, labelSelector map[string]string) ([]ctr.ContainerInfo, error)
	WaitTask(ctx context.Context, name string) (int, error)
	Kill(ctx context.Context, name string, sig syscall.Signal) error
	Stop(ctx context.Context, name string, timeout time.Duration) (int, error)
	Leftovers(ctx context.Context) (ctr.Leftovers, error)
	DeleteTask(ctx context.Context, name string) error
	RemoveSnapshot(ctx context.Context, key string) error
	OrphanShims(ctx context.Context, idPrefix string) ([]ctr.OrphanShim, error)
	KillOrphanShim(ctx context.Context, s ctr.OrphanShim) error
	Address() string
	Snapshotter() string
	ImagesWithPrefix(ctx context.Context, prefix string) ([]string, error)
	RemoveImage(ctx context.Context, ref string) error
}

// network is what runtime asks of the host network: the methods of *netns.Manager it
// uses, so the orchestration can be tested with a fake.
type network interface {
	BottleNetworks(identity string, slot int, pool netip.Prefix) (internal, egress netns.Network, err error)
	ReserveSlot(identity string, pool netip.Prefix) (int, error)
	ReleaseSlot(identity string) error
	ForeignBottles() (map[string]names.Owner, error)
	InstallFirewall(ctx context.Context, identity string, internal, egress netns.Network) error
	RemoveFirewall(ctx context.Context, identity string) error
	CheckFirewall(ctx context.Context, identity string, internal netns.Network) error
	RemoveNetworks(ctx context.Context, identity string, nets []netns.Network) error
	Setup(ctx context.Context, containerName string, atts []netns.Attachment) (nsPath string, release func(context.Context) error, err error)
	TeardownContainers(ctx context.Context, identity string, containers map[string][]netns.Attachment, nets []netns.Network) error
	TeardownBottle(ctx context.Context, identity string, containers map[string][]netns.Attachment, nets []netns.Network) error
	Leftovers(ctx context.Context) (netns.Leftovers, error)
	Sweep(ctx context.Context, keep func(identity string) bool) (netns.Leftovers, error)
	SweepOrphanedOwner(ctx context.Context, id string) (netns.Leftovers, error)
	OrphanedOwners(left netns.Leftovers) ([]netns.OrphanedOwner, error)
}

var (
	_ containers = (*ctr.Client)(nil)
	_ network    = (*netns.Manager)(nil)
)
