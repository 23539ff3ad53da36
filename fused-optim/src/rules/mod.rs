//! The optimizers: one file per rule (its declaration, scalars, twin, unfused program,
//! variants) with its WGSL beside it, and the registry below that everything iterating "every
//! rule" reads. A rule file knows what a rule is (`crate::rule`) and nothing of the GPU host
//! layer or of the other rules.
//!
//! Adding an optimizer is its two files (`name.rs`, `name.wgsl`) and one line in the
//! registry: the tests, the benchmark, the shader checks, the schema and the example then
//! cover it.

use crate::rule::schema;
use crate::rule::RegisteredRule;

/// Something done once per registered rule type, e.g. running its twin tests or listing its
/// benchmark variants: [`visit_rules`] calls `visit::<R>()` for every rule `R`.
pub trait RuleVisitor {
    /// Called once per registered rule, in registry order.
    fn visit<R: RegisteredRule>(&mut self);
}

/// Declares each rule's module, re-exports its items (here, for [`crate::tooling`]), lists
/// its types in `optimizers` (re-exported at the crate's root) and its first type, the
/// registered one, for [`visit_rules`]; every type goes into [`rule_schema`], and every
/// rule's scalars into [`LARGEST_SCALARS_BYTES`].
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

        /// Every configuration type's torch class entry, for [`rule_schema`].
        fn torch_classes() -> Vec<(&'static str, serde_json::Value)> {
            [$(schema::torch_class_entry::<$rule>() $(, schema::torch_class_entry::<$more>())*),*]
                .into_iter()
                .flatten()
                .collect()
        }

        /// The largest per-step scalars of any rule, in bytes: what the per-dispatch values
        /// must hold beside their header.
        pub const LARGEST_SCALARS_BYTES: u64 = {
            let mut largest = 0;
            let sizes = [$(
                std::mem::size_of::<<$rule as crate::rule::Declared>::Scalars>(),
                $(std::mem::size_of::<<$more as crate::rule::Declared>::Scalars>(),)*
            )*];
            let mut i = 0;
            while i < sizes.len() {
                if sizes[i] > largest {
                    largest = sizes[i];
                }
                i += 1;
            }
            largest as u64
        };
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

/// Every rule's declaration as JSON (see `fused-optim/rule-schema.json`, which holds its
/// output): each checkpoint rule's state and scalars, and each torch class's hyperparameters
/// with their defaults and ranges. What tools outside Rust read instead of copying tables.
pub fn rule_schema() -> serde_json::Value {
    struct Rules(serde_json::Map<String, serde_json::Value>);
    impl RuleVisitor for Rules {
        fn visit<R: RegisteredRule>(&mut self) {
            self.0.insert(
                R::CHECKPOINT_NAME.to_owned(),
                schema::rule_entry::<R>(R::KEY),
            );
        }
    }
    let mut rules = Rules(serde_json::Map::new());
    visit_rules(&mut rules);
    let classes = torch_classes()
        .into_iter()
        .map(|(class, entry)| (class.to_owned(), entry))
        .collect();
    schema::document(rules.0, classes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::UpdateRule;

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
                declaration_names_its_own_fields::<R>();
            }
        }
        let mut names = Names::default();
        visit_rules(&mut names);
        declaration_names_its_own_fields::<AdamW>();
        for list in [&names.keys, &names.variants] {
            let mut sorted = list.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), list.len(), "duplicate names in {list:?}");
        }
    }

    /// A declaration's slot flags and torch-less names are hyperparameters of its own, and
    /// its slot lists name its slots.
    fn declaration_names_its_own_fields<C: UpdateRule>() {
        let fields: Vec<&str> = C::HYPERPARAMETERS.iter().map(|field| field.name).collect();
        for (slot, flag) in C::KEPT_WITH {
            assert!(
                fields.contains(flag),
                "{slot} is kept with {flag}, not a hyperparameter"
            );
            assert!(C::STATE_SLOTS.contains(slot), "{slot} is not a slot");
        }
        for name in C::NOT_IN_TORCH {
            assert!(fields.contains(name), "{name} is not a hyperparameter");
        }
        for slot in C::NON_NEGATIVE {
            assert!(C::STATE_SLOTS.contains(slot), "{slot} is not a slot");
        }
    }

    /// `fused-optim/rule-schema.json`, which the PyTorch converter reads, is what the registry
    /// declares. After changing a declaration, rewrite it with
    /// `FUSED_OPTIM_WRITE_SCHEMA=1 cargo test -p fused-optim --lib schema` and review the diff.
    #[test]
    fn the_committed_schema_is_the_registrys() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rule-schema.json");
        let schema = serde_json::to_string_pretty(&rule_schema()).unwrap() + "\n";
        if std::env::var_os("FUSED_OPTIM_WRITE_SCHEMA").is_some() {
            std::fs::write(&path, &schema).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == schema,
            "{} is not the registry's schema; rewrite it with \
             FUSED_OPTIM_WRITE_SCHEMA=1 cargo test -p fused-optim --lib schema",
            path.display()
        );
    }

    /// The largest scalars are the registry's largest (NAdam's nine words today).
    #[test]
    fn the_largest_scalars_are_counted() {
        assert_eq!(LARGEST_SCALARS_BYTES, 36);
    }
}
