//! The workspace's one convention for a poisoned lock: take it anyway. A panic while a lock
//! was held is a bug, which the panic has already reported; the state such a lock guards is
//! whole between the statements that change it, and refusing every later request that
//! needs it would turn one failed request into a daemon or a mount that serves nothing.
//! `clippy.toml` disallows `Mutex::lock` and `RwLock::{read, write}` elsewhere.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// [`Mutex::lock`], taking a poisoned lock anyway.
pub trait Lock<T: ?Sized> {
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> Lock<T> for Mutex<T> {
    #[allow(clippy::disallowed_methods)]
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// [`RwLock::read`] and [`RwLock::write`], taking a poisoned lock anyway.
pub trait ReadWrite<T: ?Sized> {
    fn read_locked(&self) -> RwLockReadGuard<'_, T>;
    fn write_locked(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> ReadWrite<T> for RwLock<T> {
    #[allow(clippy::disallowed_methods)]
    fn read_locked(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(PoisonError::into_inner)
    }

    #[allow(clippy::disallowed_methods)]
    fn write_locked(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(PoisonError::into_inner)
    }
}
