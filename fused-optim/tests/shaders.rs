//! Every shader through naga the way wgpu compiles it: the WGSL is parsed and validated, the
//! pipeline overrides are applied, and the result is written as SPIR-V (Vulkan), MSL (Metal),
//! HLSL (DX12) and GLSL (GL/GLES). wgpu only runs the back end of the adapter it opens, so this
//! test is what checks the Metal, DX12 and GL translations on a machine that has none of them.
//! Each shader's `bool` overrides are read from the shader itself and every combination of them
//! is translated, so a new flag is covered without touching this file, and every registered
//! rule is covered without naming it. No GPU is needed.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use fused_optim::baseline::{Roofline, RooflineScalars};
use fused_optim::tooling::{
    shader_source, visit_rules, Lanes, RegisteredRule, RuleVisitor, ScalarFields,
    MAX_STEP_VALUES_BYTES,
};
use fused_optim::{Precision, StepValues, UpdateRule};
use naga::back::pipeline_constants::process_overrides;
use naga::back::{glsl, hlsl, msl, spv, PipelineConstants};
use naga::proc::{BoundsCheckPolicies, BoundsCheckPolicy};
use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};
use naga::{AddressSpace, Module, ResourceBinding, Scalar, ShaderStage, TypeInner};

const ENTRY_POINT: &str = "main";

/// wgpu's default runtime checks: indices and buffer accesses clamped in bounds.
const BOUNDS_CHECKS: BoundsCheckPolicies = BoundsCheckPolicies {
    index: BoundsCheckPolicy::Restrict,
    buffer: BoundsCheckPolicy::Restrict,
    image_load: BoundsCheckPolicy::Restrict,
    binding_array: BoundsCheckPolicy::Unchecked,
};

/// Every registered rule's shader, read with naga, declares what the rule's Rust side says,
/// so the descriptions of a state slot (its name in `STATE_SLOTS`, its position in the twin's
/// `state`, its binding) cannot drift: a rule's own WGSL declares no binding, the host
/// generates binding `8 + 2i` as `STATE_SLOTS[i]` (and `9 + 2i` as its scales in 8-bit), no
/// other binding lies past the maps, and the WGSL `Scalars`, which the host declares from the
/// rule's `declare_scalars!`, has the Rust struct's size and field names (the WGSL layout
/// rules could pad where `#[repr(C)]` does not). The roofline baseline is held to the same.
#[test]
fn state_slots_and_scalars_are_declared_once() {
    struct Declarations;
    impl RuleVisitor for Declarations {
        fn visit<R: RegisteredRule>(&mut self) {
            check_declarations::<R>(R::KEY);
        }
    }
    visit_rules(&mut Declarations);
    check_declarations::<Roofline>("roofline");
}

fn check_declarations<R: UpdateRule>(name: &str) {
    assert!(
        !R::SHADER.contains("@binding"),
        "{name}: a rule's WGSL declares no binding; the host generates them per format"
    );
    assert!(
        !R::SHADER.contains("struct Scalars"),
        "{name}: a rule's WGSL declares no `Scalars`; the host declares it from the Rust one"
    );
    for (precision, per_slot) in [(Precision::default(), 1), (Precision::lean(), 2)] {
        check_bindings::<R>(name, &precision, per_slot);
    }
}

fn check_bindings<R: UpdateRule>(name: &str, precision: &Precision, per_slot: usize) {
    let source = shader_source::<R>(Lanes::Vector, StepValues::UniformCopy, precision, false);
    let module = naga::front::wgsl::parse_str(&source)
        .unwrap_or_else(|e| panic!("{name}: WGSL parse error:\n{}", e.emit_to_string(&source)));
    let mut state: Vec<(u32, String)> = module
        .global_variables
        .iter()
        .filter_map(|(_, var)| {
            let binding = var.binding.as_ref()?;
            let name = var.name.clone().unwrap_or_default();
            (binding.group == 0 && binding.binding >= 5).then_some((binding.binding, name))
        })
        .collect();
    state.sort();
    let declared: Vec<(u32, String)> = R::STATE_SLOTS
        .iter()
        .enumerate()
        .flat_map(|(i, slot)| {
            let slot = slot.to_string();
            [
                (8 + 2 * i as u32, slot.clone()),
                (9 + 2 * i as u32, slot + "_scale"),
            ]
            .into_iter()
            .take(per_slot)
        })
        .collect();
    assert_eq!(
        state, declared,
        "{name}: the shader's state bindings (left) differ from STATE_SLOTS (right)"
    );
    let (scalars, members) = module
        .types
        .iter()
        .find_map(|(_, ty)| match (&ty.name, &ty.inner) {
            (Some(type_name), TypeInner::Struct { span, members }) if type_name == "Scalars" => {
                let names: Vec<String> = members
                    .iter()
                    .map(|member| member.name.clone().unwrap_or_default())
                    .collect();
                Some((*span as usize, names))
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("{name}: the shader declares no `struct Scalars`"));
    assert_eq!(
        scalars,
        std::mem::size_of::<R::Scalars>(),
        "{name}: the WGSL Scalars is {scalars} bytes, the Rust Scalars {}",
        std::mem::size_of::<R::Scalars>()
    );
    assert_eq!(
        members,
        <R::Scalars as ScalarFields>::FIELDS
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>(),
        "{name}: the WGSL Scalars' fields (left) differ from the declared scalars (right)"
    );
}

/// The per-dispatch values of every registered rule fit the immediates the context checks
/// for (the 32-byte header and the scalars), the largest exactly, in whole 4-byte words as
/// `set_immediates` takes them.
#[test]
fn every_rules_values_fit_the_immediates_the_context_checks_for() {
    struct Sizes(Vec<u64>);
    impl RuleVisitor for Sizes {
        fn visit<R: RegisteredRule>(&mut self) {
            self.0.push(32 + std::mem::size_of::<R::Scalars>() as u64);
        }
    }
    let mut sizes = Sizes(vec![32 + std::mem::size_of::<RooflineScalars>() as u64]);
    visit_rules(&mut sizes);
    let sizes = sizes.0;
    assert_eq!(sizes.iter().max(), Some(&MAX_STEP_VALUES_BYTES));
    assert!(sizes.iter().all(|size| size % 4 == 0), "{sizes:?}");
}

#[test]
fn every_shader_translates_to_every_backend_for_every_flag_combination() {
    let sources = fused_optim::tooling::shader_sources()
        .into_iter()
        .chain(fused_optim::baseline::shader_sources());
    for (file, source) in sources {
        let module = naga::front::wgsl::parse_str(&source)
            .unwrap_or_else(|e| panic!("{file}: WGSL parse error:\n{}", e.emit_to_string(&source)));
        // Baseline capabilities: the shaders must not need any optional device feature beyond
        // immediates, and only the forms that take their values as immediates may use them.
        let capabilities = match has_immediates(&module) {
            true => Capabilities::IMMEDIATES,
            false => Capabilities::default(),
        };
        let info = Validator::new(ValidationFlags::all(), capabilities)
            .validate(&module)
            .unwrap_or_else(|e| panic!("{file}: validation error:\n{}", e.emit_to_string(&source)));

        let flags = bool_overrides(&module);
        for combination in 0..1u32 << flags.len() {
            let mut constants = PipelineConstants::default();
            constants.insert(
                "WORKGROUP_SIZE".to_owned(),
                f64::from(fused_optim::tooling::WORKGROUP_SIZE),
            );
            let mut label = format!("{file} with");
            for (bit, flag) in flags.iter().enumerate() {
                let on = combination >> bit & 1 == 1;
                constants.insert(flag.clone(), if on { 1.0 } else { 0.0 });
                write!(label, " {flag}={on}").unwrap();
            }

            // Applies the constants, drops the unused globals and re-validates, as wgpu does
            // before handing the module to a back end.
            let (module, info) = process_overrides(
                &module,
                &info,
                Some((ShaderStage::Compute, ENTRY_POINT)),
                &constants,
            )
            .unwrap_or_else(|e| panic!("{label}: applying the overrides failed: {e:?}"));

            write_spirv(&module, &info, &label);
            write_msl(&module, &info, &label);
            write_hlsl(&module, &info, &label);
            write_glsl(&module, &info, &label);
        }
    }
}

/// Whether the module declares immediates (`var<immediate>`).
fn has_immediates(module: &Module) -> bool {
    module
        .global_variables
        .iter()
        .any(|(_, var)| var.space == AddressSpace::Immediate)
}

/// Pipeline-constant keys (the `@id` if there is one, else the name) of the `bool` overrides.
fn bool_overrides(module: &Module) -> Vec<String> {
    module
        .overrides
        .iter()
        .filter(|(_, o)| module.types[o.ty].inner == TypeInner::Scalar(Scalar::BOOL))
        .map(|(_, o)| match (o.id, &o.name) {
            (Some(id), _) => id.to_string(),
            (None, Some(name)) => name.clone(),
            (None, None) => panic!("a bool override has neither a name nor an @id"),
        })
        .collect()
}

/// Every resource the (override-processed) module still uses, in (group, binding) order.
/// The back ends get explicit binding maps built from this and `fake_missing_bindings: false`,
/// as wgpu passes them, so a resource without a slot is an error rather than placeholder code.
fn resources(module: &Module) -> BTreeMap<ResourceBinding, AddressSpace> {
    module
        .global_variables
        .iter()
        .filter_map(|(_, var)| Some((var.binding?, var.space)))
        .collect()
}

fn write_spirv(module: &Module, info: &ModuleInfo, label: &str) {
    // Vulkan: bind group = descriptor set, binding = binding.
    let options = spv::Options {
        binding_map: resources(module)
            .into_keys()
            .map(|br| {
                let target = spv::BindingInfo {
                    descriptor_set: br.group,
                    binding: br.binding,
                    binding_array_size: None,
                };
                (br, target)
            })
            .collect(),
        fake_missing_bindings: false,
        bounds_check_policies: BOUNDS_CHECKS,
        ..Default::default()
    };
    let pipeline = spv::PipelineOptions {
        shader_stage: ShaderStage::Compute,
        entry_point: ENTRY_POINT.to_owned(),
    };
    let words = spv::write_vec(module, info, &options, Some(&pipeline))
        .unwrap_or_else(|e| panic!("{label}: SPIR-V: {e:?}"));
    assert_eq!(
        words.first(),
        Some(&0x0723_0203),
        "{label}: SPIR-V lacks the magic number"
    );
}

fn write_msl(module: &Module, info: &ModuleInfo, label: &str) {
    // Metal has one flat buffer table per stage: wgpu hands out slots in binding order, marks
    // read-write storage mutable and puts the runtime-array sizes buffer after the last one.
    let mut resources_map = msl::BindingMap::new();
    for (slot, (br, space)) in resources(module).into_iter().enumerate() {
        let target = msl::BindTarget {
            buffer: Some(slot.try_into().expect("more than 256 Metal buffer slots")),
            mutable: matches!(space, AddressSpace::Storage { access }
                if access.contains(naga::StorageAccess::STORE)),
            ..Default::default()
        };
        resources_map.insert(br, target);
    }
    let slots = resources_map.len() as u8;
    // wgpu puts the immediates buffer after the resources, then the sizes buffer.
    let (immediates_buffer, sizes_slot) = match has_immediates(module) {
        true => (Some(slots), slots + 1),
        false => (None, slots),
    };
    let options = msl::Options {
        // wgpu targets the device's newest MSL; 2.0 (macOS 10.13, iOS 11) is an old floor, so
        // anything only newer Metal supports fails here.
        lang_version: (2, 0),
        per_entry_point_map: msl::EntryPointResourceMap::from([(
            ENTRY_POINT.to_owned(),
            msl::EntryPointResources {
                resources: resources_map,
                immediates_buffer,
                sizes_buffer: Some(sizes_slot),
            },
        )]),
        fake_missing_bindings: false,
        bounds_check_policies: BOUNDS_CHECKS,
        ..Default::default()
    };
    let pipeline = msl::PipelineOptions {
        entry_point: Some((ShaderStage::Compute, ENTRY_POINT.to_owned())),
        ..Default::default()
    };
    let (source, translation) = msl::write_string(module, info, &options, &pipeline)
        .unwrap_or_else(|e| panic!("{label}: MSL: {e:?}"));
    for name in translation.entry_point_names {
        name.unwrap_or_else(|e| panic!("{label}: MSL entry point: {e:?}"));
    }
    assert!(
        source.contains("kernel void"),
        "{label}: MSL has no kernel:\n{source}"
    );
}

fn write_hlsl(module: &Module, info: &ModuleInfo, label: &str) {
    // Register space = bind group, register = binding; each binding is one of b/t/u by kind.
    let binding_map = resources(module)
        .into_keys()
        .map(|br| {
            let target = hlsl::BindTarget {
                space: br.group.try_into().expect("bind group beyond 255"),
                register: br.binding,
                ..Default::default()
            };
            (br, target)
        })
        .collect();
    // Shader model 5.1 (FXC) is the oldest wgpu's DX12 back end targets.
    let options = hlsl::Options {
        shader_model: hlsl::ShaderModel::V5_1,
        binding_map,
        // Immediates become a root-constant buffer in a register space of their own.
        immediates_target: has_immediates(module).then(|| hlsl::BindTarget {
            space: 1,
            register: 0,
            ..Default::default()
        }),
        fake_missing_bindings: false,
        ..Default::default()
    };
    let pipeline = hlsl::PipelineOptions {
        entry_point: Some((ShaderStage::Compute, ENTRY_POINT.to_owned())),
    };
    let mut source = String::new();
    let reflection = hlsl::Writer::new(&mut source, &options, &pipeline)
        .write(module, info, None)
        .unwrap_or_else(|e| panic!("{label}: HLSL: {e:?}"));
    for name in reflection.entry_point_names {
        name.unwrap_or_else(|e| panic!("{label}: HLSL entry point: {e:?}"));
    }
    let numthreads = format!(
        "[numthreads({}, 1, 1)]",
        fused_optim::tooling::WORKGROUP_SIZE
    );
    assert!(
        source.contains(&numthreads),
        "{label}: HLSL lacks {numthreads}:\n{source}"
    );
}

fn write_glsl(module: &Module, info: &ModuleInfo, label: &str) {
    // GL has separate binding points for uniform blocks and storage blocks, numbered from 0 by
    // kind in binding order as wgpu's GL back end does.
    let (mut uniforms, mut storage) = (0u8, 0u8);
    let binding_map: glsl::BindingMap = resources(module)
        .into_iter()
        .map(|(br, space)| {
            let counter = match space {
                AddressSpace::Uniform => &mut uniforms,
                _ => &mut storage,
            };
            *counter += 1;
            (br, *counter - 1)
        })
        .collect();
    // GLSL ES 3.10 is the least wgpu's GL back end needs for compute; desktop 4.30 likewise.
    for version in [glsl::Version::new_gles(310), glsl::Version::Desktop(430)] {
        let options = glsl::Options {
            version,
            binding_map: binding_map.clone(),
            ..Default::default()
        };
        let pipeline = glsl::PipelineOptions {
            shader_stage: ShaderStage::Compute,
            entry_point: ENTRY_POINT.to_owned(),
            multiview: None,
        };
        let mut source = String::new();
        // wgpu's GL back end leaves index and buffer bounds to the driver: no checks emitted.
        let policies = BoundsCheckPolicies::default();
        glsl::Writer::new(&mut source, module, info, &options, &pipeline, policies)
            .and_then(|mut writer| writer.write())
            .unwrap_or_else(|e| panic!("{label}: GLSL {version}: {e:?}"));
        let local_size = format!("local_size_x = {}", fused_optim::tooling::WORKGROUP_SIZE);
        assert!(
            source.contains(&local_size) && source.contains("void main()"),
            "{label}: GLSL {version} lacks {local_size} or main:\n{source}"
        );
    }
}
