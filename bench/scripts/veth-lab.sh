# Sourced by the veth-*.sh scripts: makes network namespace $ns with the
# inner end of a veth pair ($inner, address $prefix.2/24) and leaves the
# outer end ($outer, $prefix.1/24) here; `veth_lab_down` deletes both.
veth_lab_up() {
    ip netns add "$ns"
    ip link add "$outer" type veth peer name "$inner"
    ip link set "$inner" netns "$ns"
    ip addr add "$prefix.1/24" dev "$outer"
    ip link set "$outer" up
    ip -n "$ns" addr add "$prefix.2/24" dev "$inner"
    ip -n "$ns" link set "$inner" up
    ip -n "$ns" link set lo up
}

veth_lab_down() {
    ip netns del "$ns" 2>/dev/null || true
}
