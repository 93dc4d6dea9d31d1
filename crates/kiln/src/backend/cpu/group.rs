//! A fused group as the CPU runs it: the planned [`FusedGroup`] and the
//! caches the CPU derives from it on first run.

use std::borrow::Borrow;
use std::ops::Deref;

use crate::backend::cpu::interpreter::PlanSlot;
use crate::backend::cpu::jit::CodeSlot;
use crate::backend::cpu::stream::StoreChoice;
use crate::passes::fuse::FusedGroup;

/// A [`FusedGroup`] with its machine code and its interpreter plan, each
/// made on the group's first run and shared by clones made after it (a
/// compiled function's steps hold these, so each group is compiled and
/// planned once, not per call), and the way its launches store, learned
/// over its first launches. Reads as the group it wraps (`Deref`).
#[derive(Clone, Debug)]
pub struct CpuGroup {
    /// The planned group.
    pub group: FusedGroup,
    /// Machine code for the group (see [`jit`](crate::backend::cpu::jit)).
    pub code: CodeSlot,
    /// The tile registers' plan of the interpreter (see [`PlanSlot`]).
    pub plan: PlanSlot,
    /// How its elementwise launches store their outputs, learned from
    /// their times (see [`StoreChoice`]).
    pub stores: StoreChoice,
}

impl CpuGroup {
    /// `group` with empty caches (allocates nothing more: eager ops make one
    /// per call).
    pub fn new(group: FusedGroup) -> CpuGroup {
        CpuGroup { group, code: CodeSlot::default(), plan: PlanSlot::default(), stores: StoreChoice::default() }
    }
}

impl From<FusedGroup> for CpuGroup {
    fn from(group: FusedGroup) -> CpuGroup {
        CpuGroup::new(group)
    }
}

impl Deref for CpuGroup {
    type Target = FusedGroup;

    fn deref(&self) -> &FusedGroup {
        &self.group
    }
}

impl Borrow<FusedGroup> for CpuGroup {
    fn borrow(&self) -> &FusedGroup {
        &self.group
    }
}
