//! For tool authors, not for training: the kernels' WGSL and dispatch shapes, the registry
//! of rules (to cover every rule without naming one, as the tests, the benchmark and the
//! example do), each rule's declaration and per-step scalars, the schema other languages'
//! tools read, and byte counts. What these say may change with the kernels. The top layer:
//! it may read every other.

pub use crate::gpu::{
    dispatch_grid, shader_forms, shader_source, Lanes, StepKernel, CODEC, DUMP_KERNELS,
    MAX_STEP_VALUES_BYTES, PRELUDE, WORKGROUP_SIZE,
};
pub use crate::rule::declaration::{Declared, Field, Range, ScalarFields};
pub use crate::rule::hyperparameter::IMPLEMENTATION_CHOICES;
pub use crate::rule::program::{Elementwise, Op, Operand, Program, Unfused};
pub use crate::rule::{bytes_per_step, kept_states, RegisteredRule};
pub use crate::rules::*;

/// Every registered rule's full WGSL (prelude and rule) in each form the host builds: vector
/// and scalar lanes, values as immediates or in a uniform. Named `file [lanes, values]`, for
/// validation and tooling.
pub fn shader_sources() -> Vec<(String, String)> {
    struct Sources(Vec<(String, String)>);
    impl RuleVisitor for Sources {
        fn visit<R: RegisteredRule>(&mut self) {
            self.0
                .extend(shader_forms::<R>(&format!("{}.wgsl", R::KEY)));
        }
    }
    let mut sources = Sources(Vec::new());
    visit_rules(&mut sources);
    sources.0
}
