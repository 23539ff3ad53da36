// The benchmark's floor (roofline.rs), appended to the prelude (src/gpu/prelude.wgsl) like an update rule
// so it shares the rules' bindings, entry point, indexing and windows exactly. It reads and
// writes the bytes a rule with as many state buffers must move (params read and written,
// grads read, each kept state read and written) with one add per written value, so that no
// load or store can be optimised away, and no update arithmetic. Its L2 coefficient is 0.
// CPU twin: `Roofline::twin_update`.

override STATE0: bool = false;
override STATE1: bool = false;
override STATE2: bool = false;

fn update(i: u32, p: V, g: V) -> V {
    if STATE0 {
        store_state0(i, load_state0(i) + p);
    }
    if STATE1 {
        store_state1(i, load_state1(i) + p);
    }
    if STATE2 {
        store_state2(i, load_state2(i) + p);
    }
    return p + g;
}
