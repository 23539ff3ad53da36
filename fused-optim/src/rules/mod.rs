//! The optimizers: one file per rule (hyperparameters, scalars, twin, unfused program, variants)
//! with its WGSL beside it, and the registry below that everything iterating "every rule"
//! reads. A rule file knows what a rule is (`crate::rule`) and nothing of the GPU host layer or
//! of the other rules; only the registry's `shader_sources` asks the host layer to assemble
//! the full shaders.
//!
//! Adding an optimizer is its two files (`name.rs`, `name.wgsl`) and one line in the
//! registry: the tests, the benchmark, `shader_sources` and the example then cover it.

use crate::gpu::shader_forms;
use crate::rule::RegisteredRule;

/// Something done once per registered rule type, e.g. running its twin tests or listing its
/// benchmark variants: [`visit_rules`] calls `visit::<R>()` for every rule `R`.
pub trait RuleVisitor {
    /// Called once per registered rule, in registry order.
    fn visit<R: RegisteredRule>(&mut self);
}

/// Declares each rule's module, re-exports its items (here, for [`crate::tooling`]), lists
/// its types in `optimizers` (re-exported at the crate's root) and its first type, the
/// registered one, for [`visit_rules`].
macro_rules! registry {
    ($($module:ident :: { $rule:ident $(, $more:ident)* }),* $(,)?) => {
        $(
            mod $module;
            pub use $module::*;
        )*

        /// The optimizers' configuration types, as the crate's root exports them.
        pub mod optimizers {
            $(pub use super::$module::{$rule $(, $more)*};)*
        }

        /// Calls `visitor.visit::<R>()` for every registered rule `R`, in registry order.
        pub fn visit_rules(visitor: &mut impl RuleVisitor) {
            $(visitor.visit::<$rule>();)*
        }
    };
}

registry! {
    sgd::{Sgd},
    adam::{Adam, AdamW},
    rmsprop::{RmsProp},
    adagrad::{Adagrad},
    nadam::{NAdam},
    radam::{RAdam},
    adamax::{Adamax},
    adadelta::{Adadelta},
    lion::{Lion},
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// What the registry's users rely on: variant names unique across the registry (the
    /// benchmark and the example select by them), keys unique and naming the rule's shader
    /// file (`shader_sources` names shaders by key), and every variant and test
    /// configuration valid.
    #[test]
    fn the_registry_is_consistent() {
        #[derive(Default)]
        struct Names {
            keys: Vec<&'static str>,
            variants: Vec<&'static str>,
        }
        impl RuleVisitor for Names {
            fn visit<R: RegisteredRule>(&mut self) {
                self.keys.push(R::KEY);
                for rule in R::variants() {
                    rule.validate().unwrap();
                    self.variants.push(rule.name());
                }
                for rule in R::every_flag() {
                    rule.validate().unwrap();
                }
                let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("src/rules")
                    .join(format!("{}.wgsl", R::KEY));
                let shader = std::fs::read_to_string(&file).unwrap_or_default();
                assert_eq!(
                    shader,
                    R::SHADER,
                    "{} is not {}'s shader",
                    file.display(),
                    R::KEY
                );
            }
        }
        let mut names = Names::default();
        visit_rules(&mut names);
        for list in [&names.keys, &names.variants] {
            let mut sorted = list.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), list.len(), "duplicate names in {list:?}");
        }
    }
}
