package supervise

import "syscall"

const oNoFollow = syscall.O_NOFOLLOW
