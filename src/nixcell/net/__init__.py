"""Cell networking: policy, the host-side proxy, TLS interception and credential swapping."""
