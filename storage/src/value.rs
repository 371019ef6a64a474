//! CRDT values: the four types a key can hold, the updates a coordinator applies with its actor,
//! whole-state merge, and the read view a client sees.
//!
//! Every type here is a join-semilattice under [`Value::merge`]:
//! - commutative: `a.merge(b) == b.merge(a)`,
//! - associative: `a.merge(b.merge(c)) == (a.merge(b)).merge(c)`,
//! - idempotent: `a.merge(a) == a`.
//!
//! These laws are what let replicas exchange whole states in any order, any number of times,
//! and still converge; the property tests in `tests/crdt_laws.rs` check them for every type.
//!
//! # Delete
//! A key delete is causal, never a wall-clock tombstone: it removes exactly what the deleting
//! replica has observed, so an update concurrent with the delete survives it.
//! - counter: the observed totals become a baseline that is subtracted from the value;
//! - set: every observed member is removed (add-wins against concurrent adds);
//! - register: a tombstone sibling is written with the observed context;
//! - map: every field is deleted as above (a field is a counter, a set and a register).
//!
//! A deleted key reads as absent but keeps its record (the causal history a stale replica's
//! state is merged against), and so keeps its type: a later update of another type is still a
//! [`StorageError::WrongType`](crate::StorageError::WrongType).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crdts::{CmRDT, CvRDT, Dot, MVReg, Orswot, PNCounter, VClock};
use num_traits::ToPrimitive;
use serde::{Deserialize, Serialize};

use crate::error::{Limit, StorageError};

/// Byte strings: set members, register values and map field names.
pub type Bytes = Vec<u8>;

/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// Longest encoded value (the CRDT state of one key), in bytes.
pub const MAX_VALUE_LEN: usize = 1 << 20;
/// Most set members (or removed members) in one operation.
pub const MAX_MEMBERS_PER_OP: usize = 1024;
/// Longest set member, register value or map field name, in bytes.
pub const MAX_ELEMENT_LEN: usize = 64 * 1024;

/// The actor of an update: a node identity plus the epoch of that node's data directory.
///
/// The epoch is drawn anew whenever a data directory is created from nothing, so a node that
/// lost its data never reuses the dots it handed out before (Riak's kv679 lesson).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Actor {
    /// Stable 64-bit hash of the node id (see [`Actor::node_hash`]).
    pub node: u64,
    /// Random epoch of the data directory.
    pub epoch: u64,
}

impl Actor {
    /// The stable hash of a node id that goes into [`Actor::node`].
    pub fn node_hash(node_id: &str) -> u64 {
        xxhash_rust::xxh3::xxh3_64(node_id.as_bytes())
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}.{:016x}", self.node, self.epoch)
    }
}

/// A causal context (version vector) as handed to clients with a register read.
pub type Clock = VClock<Actor>;

/// The type of a key, fixed by its first update. Its number is the record's type tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum Kind {
    /// A counter of signed increments (PN-counter).
    Counter = 1,
    /// An add-wins set of byte strings (ORSWOT).
    Set = 2,
    /// A multi-value register: concurrent writes are kept as siblings.
    Register = 3,
    /// A map from field names to counters, sets and registers.
    Map = 4,
}

impl Kind {
    /// The type tag stored in a record.
    pub fn tag(self) -> u8 {
        self as u8
    }

    /// The kind for a stored type tag.
    pub fn from_tag(tag: u8) -> Option<Kind> {
        match tag {
            1 => Some(Kind::Counter),
            2 => Some(Kind::Set),
            3 => Some(Kind::Register),
            4 => Some(Kind::Map),
            _ => None,
        }
    }

    /// Lower-case name, as used in errors and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Set => "set",
            Kind::Register => "register",
            Kind::Map => "map",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Counter: a PN-counter of all increments, and the PN-counter state observed by deletes.
///
/// The visible value is `total - deleted`; both halves only grow, so merge is a join.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    pub(crate) total: PNCounter<Actor>,
    pub(crate) deleted: PNCounter<Actor>,
}

/// Set: an add-wins observed-remove set of byte strings.
pub type Set = Orswot<Bytes, Actor>;

/// Register: a multi-value register whose `None` siblings are delete tombstones.
pub type Register = MVReg<Option<Bytes>, Actor>;

/// Map: field names to [`Field`]s, merged field by field.
///
/// This is not `crdts::Map`: its per-entry version vectors cannot express "removed dot 1, then
/// re-created with dot 2 by the same actor", so a field removed and re-created could resurrect
/// removed contents depending on merge order (found by the property tests; the case is kept as
/// `map_field_removed_and_recreated` in `tests/crdt_laws.rs`). Here a map is the pointwise join
/// of its fields, each a product of `crdts` types, so it is a join-semilattice by construction,
/// and removing a field is the same causal delete as deleting a key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Map {
    pub(crate) fields: BTreeMap<Bytes, Field>,
}

/// One field of a map: a counter, a set and a register, each empty until used.
///
/// A field name thus names up to three values, one per type, as a Riak map keys its fields by
/// (name, type).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    pub(crate) counter: Counter,
    pub(crate) set: Set,
    pub(crate) register: Register,
}

impl Field {
    fn merge(&mut self, other: Field) {
        counter_merge(&mut self.counter, other.counter);
        self.set.merge(other.set);
        self.register.merge(other.register);
    }

    fn remove(&mut self, actor: Actor) {
        counter_delete(&mut self.counter);
        set_delete(&mut self.set);
        register_delete(&mut self.register, actor);
    }

    fn is_present(&self) -> bool {
        counter_present(&self.counter) || set_present(&self.set) || register_present(&self.register)
    }
}

/// The CRDT state of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// See [`Counter`].
    Counter(Counter),
    /// See [`Set`].
    Set(Set),
    /// See [`Register`].
    Register(Register),
    /// See [`Map`].
    Map(Map),
}

/// An operation on a set, at top level or in a map field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetOp {
    /// Add members (with a fresh dot: concurrent removes do not cancel it).
    Add(#[serde(with = "crate::wire::list")] Vec<Bytes>),
    /// Remove members, as far as the applying replica has observed them.
    Remove(#[serde(with = "crate::wire::list")] Vec<Bytes>),
}

/// An operation on a map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MapOp {
    /// Add `delta` to the field's counter.
    Counter { field: Bytes, delta: i64 },
    /// Apply a set operation to the field's set.
    Set { field: Bytes, op: SetOp },
    /// Write the field's register; `context` as for [`Update::RegisterPut`].
    Register {
        #[serde(with = "serde_bytes")]
        field: Bytes,
        #[serde(with = "serde_bytes")]
        value: Bytes,
        context: Option<Clock>,
    },
    /// Remove the field (all three of its values), as far as observed.
    Remove { field: Bytes },
}

/// An update a coordinator applies to a key with its own actor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Update {
    /// Add a signed delta to a counter.
    CounterAdd(i64),
    /// A set operation.
    Set(SetOp),
    /// Write a register. With `context: Some(c)` the write supersedes exactly the siblings `c`
    /// covers (a client's read context); with `None` it supersedes every sibling the applying
    /// replica holds.
    RegisterPut {
        #[serde(with = "serde_bytes")]
        value: Bytes,
        context: Option<Clock>,
    },
    /// A map operation.
    Map(MapOp),
    /// Delete the key (causally: see the module docs).
    Delete,
}

impl Update {
    /// The type this update needs its key to have; `None` for a delete, which fits any type.
    pub fn kind(&self) -> Option<Kind> {
        match self {
            Update::CounterAdd(_) => Some(Kind::Counter),
            Update::Set(_) => Some(Kind::Set),
            Update::RegisterPut { .. } => Some(Kind::Register),
            Update::Map(_) => Some(Kind::Map),
            Update::Delete => None,
        }
    }

    /// Checks the update's own sizes, before any state is touched.
    pub fn validate(&self) -> Result<(), StorageError> {
        match self {
            Update::CounterAdd(_) | Update::Delete => Ok(()),
            Update::Set(op) => validate_set_op(op),
            Update::RegisterPut { value, .. } => check_len(Limit::Element, value.len()),
            Update::Map(op) => match op {
                MapOp::Counter { field, .. } | MapOp::Remove { field } => {
                    check_len(Limit::Element, field.len())
                }
                MapOp::Set { field, op } => {
                    check_len(Limit::Element, field.len())?;
                    validate_set_op(op)
                }
                MapOp::Register { field, value, .. } => {
                    check_len(Limit::Element, field.len())?;
                    check_len(Limit::Element, value.len())
                }
            },
        }
    }
}

fn validate_set_op(op: &SetOp) -> Result<(), StorageError> {
    let (SetOp::Add(members) | SetOp::Remove(members)) = op;
    check_len(Limit::MembersPerOp, members.len())?;
    members
        .iter()
        .try_for_each(|m| check_len(Limit::Element, m.len()))
}

pub(crate) fn check_len(limit: Limit, len: usize) -> Result<(), StorageError> {
    if len > limit.max() {
        Err(StorageError::TooLarge { limit, len })
    } else {
        Ok(())
    }
}

impl Value {
    /// An empty value of a kind: the state of a key before its first update.
    pub fn empty(kind: Kind) -> Value {
        match kind {
            Kind::Counter => Value::Counter(Counter::default()),
            Kind::Set => Value::Set(Set::default()),
            Kind::Register => Value::Register(Register::default()),
            Kind::Map => Value::Map(Map::default()),
        }
    }

    /// This value's type.
    pub fn kind(&self) -> Kind {
        match self {
            Value::Counter(_) => Kind::Counter,
            Value::Set(_) => Kind::Set,
            Value::Register(_) => Kind::Register,
            Value::Map(_) => Kind::Map,
        }
    }

    /// Joins `other` into `self` (commutative, associative, idempotent).
    ///
    /// Values of different types do not merge: the error changes nothing.
    pub fn merge(&mut self, other: Value) -> Result<(), StorageError> {
        match (self, other) {
            (Value::Counter(a), Value::Counter(b)) => counter_merge(a, b),
            (Value::Set(a), Value::Set(b)) => a.merge(b),
            (Value::Register(a), Value::Register(b)) => a.merge(b),
            (Value::Map(a), Value::Map(b)) => {
                for (name, field) in b.fields {
                    a.fields.entry(name).or_default().merge(field);
                }
            }
            (a, b) => {
                return Err(StorageError::WrongType {
                    stored: a.kind(),
                    update: b.kind(),
                });
            }
        }
        Ok(())
    }

    /// Applies `update` as `actor`. The update must have been [validated](Update::validate).
    ///
    /// Errors (a type mismatch) leave `self` unchanged.
    pub fn apply(&mut self, actor: Actor, update: &Update) -> Result<(), StorageError> {
        if let Some(kind) = update.kind()
            && kind != self.kind()
        {
            return Err(StorageError::WrongType {
                stored: self.kind(),
                update: kind,
            });
        }
        match (self, update) {
            (Value::Counter(c), Update::CounterAdd(delta)) => counter_add(c, actor, *delta),
            (Value::Set(s), Update::Set(op)) => apply_set_op(s, actor, op.clone()),
            (Value::Register(r), Update::RegisterPut { value, context }) => {
                register_put(r, actor, Some(value.clone()), context.as_ref());
            }
            (Value::Map(m), Update::Map(op)) => apply_map_op(m, actor, op),
            (value, Update::Delete) => value.delete(actor),
            // `update.kind()` was checked above.
            _ => unreachable!("update kind checked against value kind"),
        }
        Ok(())
    }

    fn delete(&mut self, actor: Actor) {
        match self {
            Value::Counter(c) => counter_delete(c),
            Value::Set(s) => set_delete(s),
            Value::Register(r) => register_delete(r, actor),
            Value::Map(m) => m.fields.values_mut().for_each(|f| f.remove(actor)),
        }
    }

    /// Whether a read finds the key: some update is not covered by a delete (for a set or map:
    /// it is not empty).
    pub fn is_present(&self) -> bool {
        match self {
            Value::Counter(c) => counter_present(c),
            Value::Set(s) => set_present(s),
            Value::Register(r) => register_present(r),
            Value::Map(m) => m.fields.values().any(Field::is_present),
        }
    }

    /// The read view a client sees.
    pub fn view(&self) -> View {
        match self {
            Value::Counter(c) => View::Counter(counter_value(c)),
            Value::Set(s) => View::Set(s.read().val.into_iter().collect()),
            Value::Register(r) => View::Register(register_view(r)),
            Value::Map(m) => View::Map(
                m.fields
                    .iter()
                    .filter(|(_, f)| f.is_present())
                    .map(|(name, f)| (name.clone(), field_view(f)))
                    .collect(),
            ),
        }
    }
}

fn bigint_to_i128(n: &num_bigint::BigInt) -> i128 {
    // Sums of i64 deltas reach i128's range only after 2^64 maximal updates.
    n.to_i128()
        .unwrap_or(if n.sign() == num_bigint::Sign::Minus {
            i128::MIN
        } else {
            i128::MAX
        })
}

fn counter_add(c: &mut Counter, actor: Actor, delta: i64) {
    let steps = delta.unsigned_abs();
    match delta.cmp(&0) {
        Ordering::Greater => c.total.apply(c.total.inc_many(actor, steps)),
        Ordering::Less => c.total.apply(c.total.dec_many(actor, steps)),
        Ordering::Equal => {}
    }
}

fn counter_merge(a: &mut Counter, b: Counter) {
    a.total.merge(b.total);
    a.deleted.merge(b.deleted);
}

/// The observed totals become the baseline: concurrent increments elsewhere stay counted.
fn counter_delete(c: &mut Counter) {
    c.deleted.merge(c.total.clone());
}

fn counter_present(c: &Counter) -> bool {
    c.total != c.deleted
}

fn counter_value(c: &Counter) -> i128 {
    bigint_to_i128(&c.total.read()).saturating_sub(bigint_to_i128(&c.deleted.read()))
}

/// Removes every observed member; concurrent adds survive (add wins).
fn set_delete(s: &mut Set) {
    let (members, ctx) = s.read().split();
    if !members.is_empty() {
        s.apply(s.rm_all(members, ctx.derive_rm_ctx()));
    }
}

fn set_present(s: &Set) -> bool {
    !s.read().val.is_empty()
}

/// Writes a tombstone sibling over every observed value.
fn register_delete(r: &mut Register, actor: Actor) {
    if register_present(r) {
        register_put(r, actor, None, None);
    }
}

fn register_present(r: &Register) -> bool {
    r.read().val.iter().any(Option::is_some)
}

fn register_view(r: &Register) -> RegisterView {
    let read = r.read();
    let mut values: Vec<Bytes> = read.val.into_iter().flatten().collect();
    values.sort();
    values.dedup();
    RegisterView {
        values,
        context: read.add_clock,
    }
}

fn field_view(field: &Field) -> FieldView {
    FieldView {
        counter: counter_present(&field.counter).then(|| counter_value(&field.counter)),
        set: set_present(&field.set).then(|| field.set.read().val.into_iter().collect()),
        register: register_present(&field.register).then(|| register_view(&field.register).values),
    }
}

/// Applies a set op as `actor`.
fn apply_set_op(set: &mut Set, actor: Actor, op: SetOp) {
    match op {
        SetOp::Add(members) => {
            if members.is_empty() {
                return;
            }
            let ctx = set.read_ctx().derive_add_ctx(actor);
            set.apply(set.add_all(members, ctx));
        }
        SetOp::Remove(members) => {
            for member in members {
                let ctx = set.contains(&member).derive_rm_ctx();
                set.apply(set.rm(member, ctx));
            }
        }
    }
}

/// A register write: its clock is the superseded context plus a fresh dot of `actor`.
fn register_put(r: &mut Register, actor: Actor, value: Option<Bytes>, context: Option<&Clock>) {
    let local = r.read_ctx().add_clock;
    let mut clock = context.cloned().unwrap_or_else(|| local.clone());
    clock.apply(Dot::new(
        actor,
        local.get(&actor).max(clock.get(&actor)) + 1,
    ));
    r.apply(crdts::mvreg::Op::Put { clock, val: value });
}

fn apply_map_op(m: &mut Map, actor: Actor, op: &MapOp) {
    match op {
        MapOp::Remove { field } => {
            if let Some(f) = m.fields.get_mut(field) {
                f.remove(actor);
            }
        }
        MapOp::Counter { field, delta } => counter_add(
            &mut m.fields.entry(field.clone()).or_default().counter,
            actor,
            *delta,
        ),
        MapOp::Set { field, op } => apply_set_op(
            &mut m.fields.entry(field.clone()).or_default().set,
            actor,
            op.clone(),
        ),
        MapOp::Register {
            field,
            value,
            context,
        } => register_put(
            &mut m.fields.entry(field.clone()).or_default().register,
            actor,
            Some(value.clone()),
            context.as_ref(),
        ),
    }
}

/// What a client sees of a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum View {
    /// The counter's value.
    Counter(i128),
    /// The set's members, sorted.
    Set(BTreeSet<Bytes>),
    /// The register's values (siblings) and the context to write back with.
    Register(RegisterView),
    /// The map's fields.
    Map(BTreeMap<Bytes, FieldView>),
}

/// A register's siblings, sorted, and the causal context that covers them all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterView {
    /// Concurrent values; one after a write that saw all others.
    #[serde(with = "crate::wire::list")]
    pub values: Vec<Bytes>,
    /// Pass this back with a write to supersede exactly these values.
    pub context: Clock,
}

/// The values a map field holds, one per type that has been used.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldView {
    /// The field's counter, if it was ever incremented.
    pub counter: Option<i128>,
    /// The field's set, if not empty.
    pub set: Option<BTreeSet<Bytes>>,
    /// The field's register values, if written.
    pub register: Option<Vec<Bytes>>,
}
