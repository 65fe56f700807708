//! Names held once per core with a `u32` id each and what the core keeps per name; an id is
//! freed with its name and reused for the next one. Owned by one core (no locks). The
//! subscriber index keeps group and topic names with their followers in one, the MQTT adapter
//! granted topic filters with their grant counts in another.

use std::collections::HashMap;

#[derive(Debug)]
pub(crate) struct Interner<T> {
    ids: HashMap<Box<str>, u32>,
    /// By id; a freed id has no name and `T::default()` until reused.
    entries: Vec<(Box<str>, T)>,
    free: Vec<u32>,
}

impl<T> Default for Interner<T> {
    fn default() -> Interner<T> {
        Interner { ids: HashMap::new(), entries: Vec::new(), free: Vec::new() }
    }
}

impl<T: Default> Interner<T> {
    pub(crate) fn id(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    pub(crate) fn name(&self, id: u32) -> &str {
        &self.entries[id as usize].0
    }

    pub(crate) fn get(&self, id: u32) -> &T {
        &self.entries[id as usize].1
    }

    pub(crate) fn get_mut(&mut self, id: u32) -> &mut T {
        &mut self.entries[id as usize].1
    }

    /// The id of `name`, held now (with `T::default()`) if it was not.
    pub(crate) fn intern(&mut self, name: &str) -> u32 {
        if let Some(id) = self.id(name) {
            return id;
        }
        let entry = (Box::<str>::from(name), T::default());
        let id = match self.free.pop() {
            Some(id) => {
                self.entries[id as usize] = entry;
                id
            }
            None => {
                self.entries.push(entry);
                (self.entries.len() - 1) as u32
            }
        };
        self.ids.insert(name.into(), id);
        id
    }

    /// Forgets `id`'s name and value; the id is reused.
    pub(crate) fn forget(&mut self, id: u32) {
        let (name, _) = std::mem::take(&mut self.entries[id as usize]);
        self.ids.remove(&name);
        self.free.push(id);
    }

    /// Names held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    /// Ids ever handed out (held or free).
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_held_once_and_freed_ids_reused() {
        let mut t = Interner::<u32>::default();
        let a = t.intern("a");
        assert_eq!((t.intern("a"), t.id("a"), t.name(a)), (a, Some(a), "a"));
        *t.get_mut(a) += 2;
        let b = t.intern("b");
        assert_eq!((*t.get(a), *t.get(b), t.len()), (2, 0, 2));
        t.forget(a);
        assert_eq!((t.id("a"), t.len()), (None, 1));
        let c = t.intern("c");
        assert_eq!((c, *t.get(c), t.capacity()), (a, 0, 2), "the freed id, with a fresh value");
    }
}
