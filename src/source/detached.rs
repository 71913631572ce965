//! The one way an upstream call is run apart from whoever waits for it.

use std::future::Future;

/// Run `call` on its own task and wait for it. A waiter that gives up (a read's
/// timeout, a dropped future) gives up only the waiting: the call itself goes
/// on, since it may be between an upstream rotating a refresh token and its
/// saving. A panic in it (a bug) is logged and becomes the error, so that no
/// waiter hangs and no cell stays "in flight"; its message is not passed on,
/// since an error here reaches `.status`.
pub async fn detached<T, F>(call: F) -> Result<T, String>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    match tokio::spawn(call).await {
        Ok(value) => Ok(value),
        Err(e) if e.is_panic() => {
            tracing::error!("a bug: an upstream call panicked");
            Err("the upstream call failed (a bug in tokenfs: see the log)".into())
        }
        Err(_) => Err("the upstream call was cancelled (tokenfs is stopping)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_is_an_error_without_its_message_and_a_value_passes() {
        assert_eq!(detached(async { 7 }).await, Ok(7));
        let err = detached(async {
            if true {
                panic!("secret-looking text");
            }
        })
        .await
        .unwrap_err();
        assert!(err.contains("a bug"), "{err}");
        assert!(!err.contains("secret-looking"), "{err}");
    }

    #[tokio::test]
    async fn the_call_goes_on_when_its_waiter_gives_up() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let waiting = detached(async move {
            tokio::task::yield_now().await;
            tx.send(()).unwrap();
        });
        // Give up at once: the waiting future is dropped before the call ends.
        drop(tokio::time::timeout(std::time::Duration::ZERO, waiting).await);
        rx.await
            .expect("the call finished although its waiter left");
    }
}
