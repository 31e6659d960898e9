// LlamaShmClient: a local llama.cpp model through llama-shm's C ABI (libllama_shm_ffi.so, ABI 5).
//
//   using (var client = LlamaShmClient.Start(new ClientOptions { WorkerPath = worker }))
//   {
//       Response r = await client.StreamAsync("Hello", "Be terse.", chunk => Console.Write(chunk),
//                                             null, cancellationToken);
//       Response c = client.Chat(new[] { ChatMessage.System("Be terse."), ChatMessage.User("Hi") });
//       float[][] v = client.Embed(new[] { "a text", "another" });
//   }
//
// Start spawns a worker of the client's own; Attach connects to a running standalone worker
// (llama-shm-worker --prefix P) that several clients and processes share. The two kinds differ
// only at the end: Dispose detaches from a shared worker (it goes on serving the others), while
// Shutdown asks it to exit.
//
// Every call is a blocking native call; the ...Async methods run it on a thread of its own
// (TaskCreationOptions.LongRunning), so an answer that takes minutes holds no pool thread.
// Requests run one at a time (the gate); a cancel goes through the client's lshm_canceller,
// which works from any thread while a request is in flight (RequestRun).
//
// `disposed` and `current` change together under `state`: a request publishes itself as
// `current` only if the client is not disposed, and Dispose sets `disposed` and reads `current`
// in one step. So either Dispose sees the request (and cancels it) or the request sees the
// client disposed (and throws ObjectDisposedException before sending anything); and exactly one
// of them — Dispose, or the request when it ends — disposes the canceller.

using System;
using System.Collections.Generic;
using System.Runtime.ExceptionServices;
using System.Runtime.InteropServices;
using System.Text;
using System.Threading;
using System.Threading.Tasks;

namespace LlamaShm
{
    /// <summary>A client of one llama-shm worker, which it spawns and shuts down
    /// (<see cref="Start"/>), or which it shares with other clients and processes
    /// (<see cref="Attach"/>).</summary>
    /// <remarks>
    /// <para><b>Thread safety.</b> All members may be called from any thread. Requests run one
    /// at a time: a second request waits for the one in flight (its CancellationToken cancels
    /// the wait too); several waiting requests are not guaranteed to start in the order they
    /// were called. <see cref="Cancel"/>, <see cref="Dispose"/> and the tokens act at once on the
    /// request in flight. Callbacks (the chunk callback, <c>IProgress.Report</c>,
    /// <see cref="OnStreamUpdate"/>) run synchronously on the request's thread, in order; they
    /// must not start another request on this client (every request method, synchronous or
    /// ...Async, then throws InvalidOperationException: waiting for it there would deadlock) and
    /// an exception they throw cancels the request and is rethrown by the call.</para>
    /// <para><b>Cancellation.</b> A cancelled answer ends within a token and the call throws
    /// <see cref="RequestCanceledException"/> (an OperationCanceledException) carrying the
    /// partial answer. An ...Async call then ends <i>faulted</i> with it (so that
    /// <c>await</c> rethrows it with its <see cref="RequestCanceledException.PartialResponse"/>),
    /// not in the Canceled state.</para>
    /// <para><b>Disposal.</b> <see cref="Dispose"/> never throws and does not wait for a
    /// request in flight: it cancels it, and the worker is shut down when that call returns
    /// (on the request's thread). Otherwise it shuts the worker down on the calling thread,
    /// bounded by about 5 s. A client that is never disposed is released by its finalizer on a
    /// thread-pool thread (the finalizer thread does not wait). A client of
    /// <see cref="Attach"/> has no worker of its own: disposing it detaches at once and the
    /// shared worker goes on serving its other clients; <see cref="Shutdown"/> asks the shared
    /// worker to exit.</para>
    /// </remarks>
    public sealed class LlamaShmClient : IDisposable
    {
        /// <summary>The C ABI version this assembly is written for (LSHM_ABI_VERSION).</summary>
        public const uint RequiredAbiVersion = NativeMethods.AbiVersion;

        private static volatile bool libraryChecked;

        [ThreadStatic]
        private static LlamaShmClient runningOnThisThread;

        private readonly ClientHandle handle;
        private readonly CancellerHandle canceller;
        private readonly SemaphoreSlim gate = new SemaphoreSlim(1, 1);
        private readonly object state = new object();
        private RequestRun current; // under state
        private volatile bool disposed; // written under state
        private int workerPid;

        private LlamaShmClient(ClientHandle handle, CancellerHandle canceller)
        {
            this.handle = handle;
            this.canceller = canceller;
            RefreshWorkerPid();
        }

        /// <summary>Raised for each piece of a streaming answer (<see cref="Stream"/>,
        /// <see cref="StreamAsync(string, string, Action{string}, RequestOptions, CancellationToken)"/>),
        /// then once with <see cref="StreamUpdateEventArgs.IsComplete"/> set: the seed
        /// LocalLLMService's OnStreamUpdate. Raised on the request's thread; use a
        /// SynchronizationContext (or Control.BeginInvoke / Dispatcher) to reach a UI.</summary>
        public event EventHandler<StreamUpdateEventArgs> OnStreamUpdate;

        /// <summary>The ABI version of the loaded libllama_shm_ffi (0 if it is too old to say).</summary>
        public static uint LibraryAbiVersion
        {
            get
            {
                try
                {
                    return NativeMethods.lshm_abi_version();
                }
                catch (EntryPointNotFoundException)
                {
                    return 0;
                }
            }
        }

        /// <summary>The loaded libllama_shm_ffi's version, e.g. "0.1.0".</summary>
        public static string LibraryVersion
        {
            get { return Utf8.FromNativeZ(NativeMethods.lshm_version()); }
        }

        /// <summary>The worker's process id, read after start-up and after each request (a
        /// restart policy may replace the worker).</summary>
        public int WorkerProcessId
        {
            get { return Volatile.Read(ref workerPid); }
        }

        /// <summary>Spawns a worker and waits until it is ready (bounded by
        /// <see cref="ClientOptions.StartupTimeout"/>).</summary>
        /// <exception cref="IncompatibleLibraryException">libllama_shm_ffi is not ABI 5.</exception>
        /// <exception cref="DllNotFoundException">libllama_shm_ffi.so was not found.</exception>
        /// <exception cref="WorkerNotFoundException">No worker binary at the path.</exception>
        /// <exception cref="WorkerStartupException">The worker exited or was not ready in time.</exception>
        public static LlamaShmClient Start(ClientOptions options)
        {
            if (options == null)
                throw new ArgumentNullException("options");
            EnsureCompatibleLibrary();
            NativeMethods.LshmOptions native = options.ToNative();
            byte[] worker = options.WorkerPath == null ? null : Utf8.ToNative(options.WorkerPath, "WorkerPath");
            var args = new byte[options.WorkerArguments.Count][];
            for (int i = 0; i < args.Length; i++)
                args[i] = Utf8.ToNative(options.WorkerArguments[i], "WorkerArguments[" + i + "]");

            var argv = new IntPtr[args.Length];
            ClientHandle client = null;
            try
            {
                for (int i = 0; i < args.Length; i++)
                {
                    argv[i] = Marshal.AllocHGlobal(args[i].Length);
                    Marshal.Copy(args[i], 0, argv[i], args[i].Length);
                }
                IntPtr error;
                int status = NativeMethods.lshm_client_new_with(worker, argv, new UIntPtr((uint)argv.Length),
                                                                ref native, out client, out error);
                StatusErrors.Check(status, error);
                return Adopt(ref client);
            }
            finally
            {
                foreach (IntPtr p in argv)
                    if (p != IntPtr.Zero)
                        Marshal.FreeHGlobal(p);
                if (client != null)
                    client.Release(false);
            }
        }

        /// <summary><see cref="Start"/> on a thread of its own.</summary>
        public static Task<LlamaShmClient> StartAsync(ClientOptions options)
        {
            if (options == null)
                throw new ArgumentNullException("options");
            return OwnThread(() => Start(options));
        }

        /// <summary>Attaches to the running worker that serves <paramref name="prefix"/>: a
        /// standalone <c>llama-shm-worker --prefix PREFIX [--parallel N] [--max-queue M]</c>, which
        /// other clients and processes may share. Nothing is started and nothing is waited for:
        /// the worker's objects must exist, belong to this user and grant no more than mode 0600.
        /// The client is used as one from <see cref="Start"/>; each request takes a free slot of
        /// the worker, waits first come first served while every slot is busy (bounded by
        /// <see cref="ClientOptions.RequestTimeout"/>), and throws
        /// <see cref="WorkerBusyException"/> at once when the worker's queue is full.
        /// <see cref="Dispose"/> detaches (the worker keeps running); <see cref="Shutdown"/> asks
        /// the shared worker to exit, for all its clients.</summary>
        /// <param name="prefix">The worker's <c>--prefix</c> (<c>"llama_cpp"</c> for the seed's names).</param>
        /// <param name="options">RequestTimeout, MaxAnswerBytes and PromptPolicy apply (the
        /// spawning settings are unused); null: the defaults.</param>
        /// <exception cref="WorkerNotRunningException">No usable worker under the prefix (its
        /// objects are missing, untrusted or malformed).</exception>
        /// <exception cref="ArgumentException">The prefix is empty, longer than 200 characters,
        /// or holds a character outside <c>[A-Za-z0-9_.-]</c>.</exception>
        /// <exception cref="IncompatibleLibraryException">libllama_shm_ffi is not ABI 5.</exception>
        /// <exception cref="DllNotFoundException">libllama_shm_ffi.so was not found.</exception>
        public static LlamaShmClient Attach(string prefix, ClientOptions options = null)
        {
            byte[] name = Utf8.ToNative(prefix, "prefix");
            NativeMethods.LshmOptions native = (options ?? new ClientOptions()).ToNative();
            EnsureCompatibleLibrary();
            ClientHandle client = null;
            try
            {
                IntPtr error;
                int status = NativeMethods.lshm_client_attach(name, ref native, out client, out error);
                if (status == (int)LshmStatus.InvalidArgument)
                    throw new ArgumentException(Utf8.TakeError(error), "prefix");
                StatusErrors.Check(status, error);
                return Adopt(ref client);
            }
            finally
            {
                if (client != null)
                    client.Release(false);
            }
        }

        /// <summary><see cref="Attach"/> on a thread of its own (attaching does not wait for
        /// the worker, but opens and maps its objects).</summary>
        public static Task<LlamaShmClient> AttachAsync(string prefix, ClientOptions options = null)
        {
            Utf8.ToNative(prefix, "prefix"); // argument errors synchronously, as the other ...Async
            return OwnThread(() => Attach(prefix, options));
        }

        /// <summary>A client around a new native handle (set to null once it is the client's).</summary>
        private static LlamaShmClient Adopt(ref ClientHandle client)
        {
            CancellerHandle canceller;
            StatusErrors.Check(NativeMethods.lshm_canceller_new(client, out canceller), IntPtr.Zero);
            var made = new LlamaShmClient(client, canceller);
            client = null;
            return made;
        }

        /// <summary>Sends one request and waits for the whole answer.</summary>
        /// <param name="user">The user prompt (UTF-16; sent as UTF-8, at most 4095 bytes on the wire).</param>
        /// <param name="system">The system prompt; null is "".</param>
        /// <param name="options">Deadline and token budget; null: none.</param>
        /// <param name="cancellationToken">Cancels the request: the answer ends within a token.</param>
        /// <returns>The answer; <see cref="Response.Finish"/> says why it ended (Stop, Length,
        /// Deadline).</returns>
        /// <exception cref="RequestCanceledException">The answer was cancelled (partial answer inside).</exception>
        /// <exception cref="LlamaShmTimeoutException">The request timeout passed.</exception>
        /// <exception cref="WorkerDiedException">The worker died during the request.</exception>
        /// <exception cref="LlamaShmClientException">Another failure; see its Status.</exception>
        /// <exception cref="ObjectDisposedException">The client was disposed.</exception>
        public Response SendRequest(string user, string system, RequestOptions options = null,
                                    CancellationToken cancellationToken = default(CancellationToken))
        {
            return Prepare(user, system, options, false, null).Run(cancellationToken);
        }

        /// <summary><see cref="SendRequest"/> on a thread of its own.</summary>
        public Task<Response> SendRequestAsync(string user, string system, RequestOptions options = null,
                                               CancellationToken cancellationToken = default(CancellationToken))
        {
            Call call = Prepare(user, system, options, false, null);
            return OwnThread(() => call.Run(cancellationToken));
        }

        /// <summary><see cref="SendRequestAsync(string, string, RequestOptions, CancellationToken)"/> without options.</summary>
        public Task<Response> SendRequestAsync(string user, string system, CancellationToken cancellationToken)
        {
            return SendRequestAsync(user, system, null, cancellationToken);
        }

        /// <summary><see cref="SendRequest"/> that passes the answer piece by piece, as it is
        /// generated, to <paramref name="onChunk"/> (may be null) and to
        /// <see cref="OnStreamUpdate"/>; the pieces concatenate to the returned text.</summary>
        public Response Stream(string user, string system, Action<string> onChunk = null, RequestOptions options = null,
                               CancellationToken cancellationToken = default(CancellationToken))
        {
            return Prepare(user, system, options, true, onChunk).Run(cancellationToken);
        }

        /// <summary><see cref="Stream"/> on a thread of its own; <paramref name="onChunk"/> runs on
        /// that thread, in order.</summary>
        public Task<Response> StreamAsync(string user, string system, Action<string> onChunk = null,
                                          RequestOptions options = null,
                                          CancellationToken cancellationToken = default(CancellationToken))
        {
            Call call = Prepare(user, system, options, true, onChunk);
            return OwnThread(() => call.Run(cancellationToken));
        }

        /// <summary><see cref="Stream"/> on a thread of its own, reporting each piece to
        /// <paramref name="progress"/>. A <c>Progress&lt;string&gt;</c> created on a UI thread
        /// posts the pieces to that thread in order; without a SynchronizationContext it posts
        /// them to the thread pool, where they may arrive out of order or after the task ends
        /// — use the Action overload there.</summary>
        public Task<Response> StreamAsync(string user, string system, IProgress<string> progress,
                                          RequestOptions options = null,
                                          CancellationToken cancellationToken = default(CancellationToken))
        {
            if (progress == null)
                throw new ArgumentNullException("progress");
            Call call = Prepare(user, system, options, true, progress.Report);
            return OwnThread(() => call.Run(cancellationToken));
        }

        /// <summary>A streaming request whose pieces go to <see cref="OnStreamUpdate"/> only.</summary>
        public Task<Response> StreamAsync(string user, string system, CancellationToken cancellationToken)
        {
            return StreamAsync(user, system, (Action<string>)null, null, cancellationToken);
        }

        /// <summary>Answers the conversation <paramref name="messages"/> (system, user and
        /// assistant messages, rendered with the model's chat template; as many as the model's
        /// context and the worker's 1 MiB request area hold) and waits for the whole answer. The
        /// echo engine answers with the contents, one per line.</summary>
        /// <param name="messages">The conversation, oldest first.</param>
        /// <param name="options">Budget, deadline, schema or grammar, seed, DropOldest; null: none.</param>
        /// <param name="cancellationToken">Cancels the request: the answer ends within a token.</param>
        /// <returns>The answer; <see cref="Response.DroppedMessages"/> says how many messages
        /// <see cref="ChatOptions.DropOldest"/> cut.</returns>
        /// <exception cref="InvalidConstraintException">The worker cannot compile the schema or grammar.</exception>
        /// <exception cref="UnsupportedException">The worker or its engine cannot do it (a
        /// seed-era worker; the echo engine and a schema).</exception>
        /// <exception cref="RequestTooLargeException">The conversation does not fit the request area.</exception>
        /// <exception cref="PromptTooLongException">It does not fit the model's context (without DropOldest).</exception>
        /// <exception cref="RequestCanceledException">The answer was cancelled (partial answer inside).</exception>
        /// <exception cref="LlamaShmClientException">Another failure; see its Status.</exception>
        public Response Chat(IList<ChatMessage> messages, ChatOptions options = null,
                             CancellationToken cancellationToken = default(CancellationToken))
        {
            return PrepareChat(messages, options, false, null).Run(cancellationToken);
        }

        /// <summary><see cref="Chat"/> on a thread of its own.</summary>
        public Task<Response> ChatAsync(IList<ChatMessage> messages, ChatOptions options = null,
                                        CancellationToken cancellationToken = default(CancellationToken))
        {
            Call call = PrepareChat(messages, options, false, null);
            return OwnThread(() => call.Run(cancellationToken));
        }

        /// <summary><see cref="Chat"/> that passes the answer piece by piece, as it is generated,
        /// to <paramref name="onChunk"/> (may be null) and to <see cref="OnStreamUpdate"/>; the
        /// pieces concatenate to the returned text.</summary>
        public Response ChatStream(IList<ChatMessage> messages, Action<string> onChunk = null, ChatOptions options = null,
                                   CancellationToken cancellationToken = default(CancellationToken))
        {
            return PrepareChat(messages, options, true, onChunk).Run(cancellationToken);
        }

        /// <summary><see cref="ChatStream"/> on a thread of its own; <paramref name="onChunk"/>
        /// runs on that thread, in order.</summary>
        public Task<Response> ChatStreamAsync(IList<ChatMessage> messages, Action<string> onChunk = null,
                                              ChatOptions options = null,
                                              CancellationToken cancellationToken = default(CancellationToken))
        {
            Call call = PrepareChat(messages, options, true, onChunk);
            return OwnThread(() => call.Run(cancellationToken));
        }

        /// <summary><see cref="ChatStream"/> on a thread of its own, reporting each piece to
        /// <paramref name="progress"/> (see the IProgress overload of StreamAsync for how a
        /// <c>Progress&lt;string&gt;</c> posts them).</summary>
        public Task<Response> ChatStreamAsync(IList<ChatMessage> messages, IProgress<string> progress,
                                              ChatOptions options = null,
                                              CancellationToken cancellationToken = default(CancellationToken))
        {
            if (progress == null)
                throw new ArgumentNullException("progress");
            Call call = PrepareChat(messages, options, true, progress.Report);
            return OwnThread(() => call.Run(cancellationToken));
        }

        /// <summary>One vector per text, from the worker's embedding model, pooled and
        /// L2-normalised (the echo engine: 16 numbers per text, identical for identical texts).
        /// No texts give no vectors and send nothing. Runs one at a time with the requests.</summary>
        /// <exception cref="UnsupportedException">The engine has no embeddings.</exception>
        /// <exception cref="RequestTooLargeException">One text is larger than the request area.</exception>
        /// <exception cref="LlamaShmClientException">Another failure; see its Status.</exception>
        public float[][] Embed(IList<string> texts)
        {
            byte[][] encoded = PrepareTexts(texts);
            return Exclusive(() => EmbedNative(encoded));
        }

        /// <summary><see cref="Embed"/> on a thread of its own.</summary>
        public Task<float[][]> EmbedAsync(IList<string> texts)
        {
            byte[][] encoded = PrepareTexts(texts);
            return OwnThread(() => Exclusive(() => EmbedNative(encoded)));
        }

        /// <summary>How many tokens <paramref name="text"/> is for the worker's model (no chat
        /// template, no special tokens; the echo engine counts words).</summary>
        /// <exception cref="UnsupportedException">The engine cannot count.</exception>
        public int CountTokens(string text)
        {
            byte[] native = PrepareCount(text);
            return Exclusive(() => CountNative(native));
        }

        /// <summary>How many prompt tokens the conversation takes through the model's chat
        /// template (what <see cref="Chat"/> would evaluate), to budget before sending.</summary>
        /// <exception cref="UnsupportedException">The engine cannot count.</exception>
        public int CountTokens(IList<ChatMessage> messages)
        {
            Parts parts = PrepareMessages(messages);
            return Exclusive(() => CountNative(parts));
        }

        /// <summary><see cref="CountTokens(string)"/> on a thread of its own.</summary>
        public Task<int> CountTokensAsync(string text)
        {
            byte[] native = PrepareCount(text);
            return OwnThread(() => Exclusive(() => CountNative(native)));
        }

        /// <summary><see cref="CountTokens(IList{ChatMessage})"/> on a thread of its own.</summary>
        public Task<int> CountTokensAsync(IList<ChatMessage> messages)
        {
            Parts parts = PrepareMessages(messages);
            return OwnThread(() => Exclusive(() => CountNative(parts)));
        }

        /// <summary>Cancels the request in flight, if any (from any thread): its answer ends
        /// within a token and its call throws <see cref="RequestCanceledException"/>. Returns
        /// whether a request was in flight.</summary>
        public bool Cancel()
        {
            RequestRun run;
            lock (state)
                run = current;
            if (run == null)
                return false;
            run.Request("LlamaShmClient.Cancel was called");
            return true;
        }

        /// <summary>Shuts the worker down in order and releases the client, reporting how it
        /// went. Waits for a request in flight to end first (use <see cref="Cancel"/> or
        /// <see cref="Dispose"/> not to wait). A second call, or a call after Dispose, does
        /// nothing. A client of <see cref="Attach"/> asks the <i>shared</i> worker to exit (for
        /// all its clients) and waits, bounded, until it is seen to exit; to leave it running,
        /// use <see cref="Dispose"/>.</summary>
        /// <exception cref="ShutdownException">The worker had to be killed or exited with a
        /// failure (attached: no turn came to ask it, or its exit was not seen in time); the
        /// client is released anyway.</exception>
        public void Shutdown()
        {
            if (runningOnThisThread == this)
                throw new InvalidOperationException("Shutdown was called from a callback of this client's request (use Dispose)");
            gate.Wait();
            try
            {
                lock (state)
                {
                    if (disposed)
                        return;
                    disposed = true;
                }
                handle.Release(true);
                canceller.Dispose();
                // Nothing else holds the handle here (every use is under the gate), so the
                // release has run; the bound only guards against a bug.
                if (!handle.WaitReleased(TimeSpan.FromSeconds(30)))
                    throw new InvalidOperationException("the native client was not released within 30 s");
                if (handle.ShutdownStatus != (int)LshmStatus.Ok)
                    throw StatusErrors.For(handle.ShutdownStatus, handle.ShutdownError);
            }
            finally
            {
                gate.Release();
            }
        }

        /// <summary>Releases the client and shuts its worker down (a client of
        /// <see cref="Attach"/> only detaches: the shared worker goes on running); never throws.
        /// A request in flight (on another thread) is cancelled and the release happens when it
        /// returns.</summary>
        public void Dispose()
        {
            RequestRun run;
            lock (state)
            {
                if (disposed)
                    return;
                disposed = true;
                run = current;
            }
            if (run != null)
                run.Request("the client was disposed");
            handle.Release(false);
            // A request in flight may still need the canceller (its cancel may be retrying);
            // it disposes it when it ends (it sees `disposed` when it clears `current`).
            if (run == null)
                canceller.Dispose();
        }

        private static void EnsureCompatibleLibrary()
        {
            if (libraryChecked)
                return;
            uint found;
            try
            {
                found = NativeMethods.lshm_abi_version();
            }
            catch (EntryPointNotFoundException e)
            {
                throw new IncompatibleLibraryException(0, RequiredAbiVersion,
                    "libllama_shm_ffi has no lshm_abi_version: it predates ABI 2, this assembly needs ABI "
                    + RequiredAbiVersion + "; rebuild it (cargo build --release -p llama-shm-ffi)", e);
            }
            catch (DllNotFoundException e)
            {
                throw new DllNotFoundException("libllama_shm_ffi.so not found: build it (cargo build --release -p "
                    + "llama-shm-ffi) and put its directory on LD_LIBRARY_PATH or next to the program", e);
            }
            if (found != RequiredAbiVersion)
                throw new IncompatibleLibraryException(found, RequiredAbiVersion,
                    "libllama_shm_ffi reports ABI " + found + ", this assembly needs ABI " + RequiredAbiVersion
                    + ": use the library and LlamaShm.dll of the same llama-shm version");
            libraryChecked = true;
        }

        private static Task<T> OwnThread<T>(Func<T> body)
        {
            // No token here: a cancelled request must end faulted with its RequestCanceledException
            // (and partial answer), which the Canceled state would replace.
            return Task.Factory.StartNew(body, CancellationToken.None,
                                         TaskCreationOptions.LongRunning | TaskCreationOptions.DenyChildAttach,
                                         TaskScheduler.Default);
        }

        private Call Prepare(string user, string system, RequestOptions options, bool stream, Action<string> onChunk)
        {
            // Checked here, on the caller's thread, for the ...Async methods too: their task
            // would wait for the request whose callback is waiting for it.
            ThrowIfInCallback();
            var call = new Call
            {
                Client = this,
                User = Utf8.ToNative(user, "user"),
                System = Utf8.ToNative(system ?? "", "system"),
                Streaming = stream,
                OnChunk = onChunk,
            };
            call.SetOptions(options, false);
            ThrowIfDisposed();
            return call;
        }

        private Call PrepareChat(IList<ChatMessage> messages, ChatOptions options, bool stream, Action<string> onChunk)
        {
            ThrowIfInCallback();
            var call = new Call
            {
                Client = this,
                Messages = PrepareMessages(messages),
                Streaming = stream,
                OnChunk = onChunk,
            };
            call.SetOptions(options, options != null && options.DropOldest);
            ThrowIfDisposed();
            return call;
        }

        private void ThrowIfInCallback()
        {
            if (runningOnThisThread == this)
                throw new InvalidOperationException("a callback of a request started another request on the same LlamaShmClient");
        }

        /// <summary>The roles and UTF-8 contents of a conversation, checked.</summary>
        private static Parts PrepareMessages(IList<ChatMessage> messages)
        {
            if (messages == null)
                throw new ArgumentNullException("messages");
            var parts = new Parts { Roles = new uint[messages.Count], Contents = new byte[messages.Count][] };
            for (int i = 0; i < messages.Count; i++)
            {
                ChatMessage m = messages[i];
                if (m == null)
                    throw new ArgumentNullException("messages", "messages[" + i + "] is null");
                parts.Roles[i] = (uint)m.Role;
                parts.Contents[i] = Utf8.ToNative(m.Content, "messages[" + i + "].Content");
            }
            return parts;
        }

        private byte[][] PrepareTexts(IList<string> texts)
        {
            ThrowIfInCallback();
            if (texts == null)
                throw new ArgumentNullException("texts");
            var encoded = new byte[texts.Count][];
            for (int i = 0; i < encoded.Length; i++)
                encoded[i] = Utf8.ToNative(texts[i], "texts[" + i + "]");
            ThrowIfDisposed();
            return encoded;
        }

        private byte[] PrepareCount(string text)
        {
            ThrowIfInCallback();
            byte[] native = Utf8.ToNative(text, "text");
            ThrowIfDisposed();
            return native;
        }

        /// <summary>Runs <paramref name="body"/> (a call that answers with numbers, not text: no
        /// cancel applies) as the one request in flight, under the gate.</summary>
        private T Exclusive<T>(Func<T> body)
        {
            ThrowIfInCallback();
            gate.Wait();
            try
            {
                ThrowIfDisposed();
                return body();
            }
            finally
            {
                gate.Release();
            }
        }

        private float[][] EmbedNative(byte[][] texts)
        {
            var pins = new Pins();
            var native = new NativeMethods.LshmEmbeddings();
            try
            {
                var pointers = new IntPtr[Math.Max(1, texts.Length)];
                for (int i = 0; i < texts.Length; i++)
                    pointers[i] = pins.Pin(texts[i]);
                IntPtr error;
                int status = NativeMethods.lshm_embed(handle, pointers, new UIntPtr((uint)texts.Length), out native, out error);
                RefreshWorkerPid();
                StatusErrors.Check(status, error);
                int count = checked((int)native.count.ToUInt64()), dim = checked((int)native.dim.ToUInt64());
                var vectors = new float[count][];
                for (int i = 0; i < count; i++)
                {
                    vectors[i] = new float[dim];
                    Marshal.Copy(native.values + i * dim * sizeof(float), vectors[i], 0, dim);
                }
                return vectors;
            }
            finally
            {
                NativeMethods.lshm_embeddings_free(ref native);
                pins.Free();
            }
        }

        private int CountNative(byte[] text)
        {
            uint tokens;
            IntPtr error;
            int status = NativeMethods.lshm_count_tokens(handle, text, out tokens, out error);
            RefreshWorkerPid();
            StatusErrors.Check(status, error);
            return Response.Clamp(tokens);
        }

        private int CountNative(Parts parts)
        {
            var pins = new Pins();
            try
            {
                NativeMethods.LshmMessage[] messages = parts.Native(pins);
                uint tokens;
                IntPtr error;
                int status = NativeMethods.lshm_count_conversation_tokens(handle, messages, new UIntPtr((uint)parts.Count),
                                                                          out tokens, out error);
                RefreshWorkerPid();
                StatusErrors.Check(status, error);
                return Response.Clamp(tokens);
            }
            finally
            {
                pins.Free();
            }
        }

        private void ThrowIfDisposed()
        {
            if (disposed)
                throw new ObjectDisposedException("LlamaShmClient");
        }

        private void RefreshWorkerPid()
        {
            try
            {
                uint pid;
                if (NativeMethods.lshm_client_worker_pid(handle, out pid) == (int)LshmStatus.Ok)
                    Volatile.Write(ref workerPid, (int)pid);
            }
            catch (ObjectDisposedException)
            {
                // Disposed meanwhile: the last pid stays.
            }
        }

        /// <summary>Byte arrays pinned for one native call (GCHandle), released together.</summary>
        private sealed class Pins
        {
            private readonly List<GCHandle> handles = new List<GCHandle>();

            /// <summary>The address of <paramref name="bytes"/>, pinned until <see cref="Free"/>;
            /// IntPtr.Zero for null or empty.</summary>
            internal IntPtr Pin(byte[] bytes)
            {
                if (bytes == null || bytes.Length == 0)
                    return IntPtr.Zero;
                GCHandle h = GCHandle.Alloc(bytes, GCHandleType.Pinned);
                handles.Add(h);
                return h.AddrOfPinnedObject();
            }

            internal void Free()
            {
                foreach (GCHandle h in handles)
                    h.Free();
                handles.Clear();
            }
        }

        /// <summary>A conversation encoded for the library: roles, and contents as NUL-terminated
        /// UTF-8 (the NUL is not sent: a message carries its length).</summary>
        private sealed class Parts
        {
            internal uint[] Roles;
            internal byte[][] Contents;

            internal int Count
            {
                get { return Roles.Length; }
            }

            /// <summary>The lshm_message array, its contents pinned in <paramref name="pins"/>.</summary>
            internal NativeMethods.LshmMessage[] Native(Pins pins)
            {
                var messages = new NativeMethods.LshmMessage[Math.Max(1, Roles.Length)];
                for (int i = 0; i < Roles.Length; i++)
                {
                    messages[i].role = Roles[i];
                    messages[i].content = pins.Pin(Contents[i]);
                    messages[i].content_len = new UIntPtr((uint)(Contents[i].Length - 1));
                }
                return messages;
            }
        }

        /// <summary>One prepared request (prompts or conversation encoded, options checked).</summary>
        private sealed class Call
        {
            internal LlamaShmClient Client;
            internal byte[] User, System;
            internal Parts Messages; // null: the two prompts
            internal ulong DeadlineMs;
            internal uint MaxTokens, Seed, DropOldest;
            internal byte[] JsonSchema, Grammar;
            internal bool Streaming;
            internal Action<string> OnChunk;

            internal void SetOptions(RequestOptions options, bool dropOldest)
            {
                DropOldest = dropOldest ? 1u : 0u;
                if (options == null)
                    return;
                DeadlineMs = options.DeadlineMs();
                MaxTokens = options.MaxTokensNative();
                Seed = options.SeedNative();
                options.Constraint(out JsonSchema, out Grammar);
            }

            internal Response Run(CancellationToken token)
            {
                LlamaShmClient c = Client;
                if (token.IsCancellationRequested)
                    throw new RequestCanceledException("the request was cancelled before it was sent", null, token);
                try
                {
                    c.gate.Wait(token);
                }
                catch (OperationCanceledException)
                {
                    throw new RequestCanceledException("the request was cancelled while it waited for the one in flight", null, token);
                }
                var run = new RequestRun(c.canceller, token);
                bool published = false;
                try
                {
                    lock (c.state)
                    {
                        c.ThrowIfDisposed();
                        c.current = run;
                        published = true;
                    }
                    runningOnThisThread = c;
                    run.Listen();
                    return Exchange(c, run, token);
                }
                finally
                {
                    runningOnThisThread = null;
                    if (published)
                    {
                        run.Finish();
                        bool disposeCanceller;
                        lock (c.state)
                        {
                            c.current = null;
                            disposeCanceller = c.disposed;
                        }
                        // Dispose saw this run in flight and left the canceller to it.
                        if (disposeCanceller)
                            c.canceller.Dispose();
                    }
                    c.gate.Release();
                }
            }

            private Response Exchange(LlamaShmClient c, RequestRun run, CancellationToken token)
            {
                var text = new StringBuilder();
                int pieces = 0;
                Exception callbackError = null;
                NativeMethods.ChunkFn fn = null;
                if (Streaming)
                {
                    fn = (p, len, userData) =>
                    {
                        // Nothing may unwind into the native caller: keep the first exception,
                        // cancel, and rethrow it once the call has returned.
                        if (callbackError != null)
                            return;
                        try
                        {
                            string chunk = Utf8.FromNative(p, len.ToUInt64());
                            text.Append(chunk);
                            pieces++;
                            if (OnChunk != null)
                                OnChunk(chunk);
                            EventHandler<StreamUpdateEventArgs> handler = c.OnStreamUpdate;
                            if (handler != null)
                                handler(c, new StreamUpdateEventArgs(text.ToString(), chunk, pieces, false, null));
                        }
                        catch (Exception e)
                        {
                            callbackError = e;
                            run.Request("a streaming callback threw " + e.GetType().Name);
                        }
                    };
                }

                var native = new NativeMethods.LshmResponse();
                var extras = new NativeMethods.LshmResponseExtras
                {
                    struct_size = (uint)Marshal.SizeOf(typeof(NativeMethods.LshmResponseExtras)),
                };
                var pins = new Pins();
                Response response;
                try
                {
                    var options = new NativeMethods.LshmRequestOptions
                    {
                        struct_size = (uint)Marshal.SizeOf(typeof(NativeMethods.LshmRequestOptions)),
                        max_tokens = MaxTokens,
                        deadline_ms = DeadlineMs,
                        seed = Seed,
                        drop_oldest = DropOldest,
                        json_schema = pins.Pin(JsonSchema),
                        grammar = pins.Pin(Grammar),
                    };
                    IntPtr error;
                    int status;
                    if (Messages != null)
                    {
                        NativeMethods.LshmMessage[] messages = Messages.Native(pins);
                        var count = new UIntPtr((uint)Messages.Count);
                        status = Streaming
                            ? NativeMethods.lshm_chat_stream(c.handle, messages, count, ref options, fn, IntPtr.Zero,
                                                             out native, ref extras, out error)
                            : NativeMethods.lshm_chat(c.handle, messages, count, ref options, out native, ref extras,
                                                      out error);
                    }
                    else
                    {
                        status = Streaming
                            ? NativeMethods.lshm_stream_with(c.handle, User, System, ref options, fn, IntPtr.Zero,
                                                             out native, ref extras, out error)
                            : NativeMethods.lshm_request_with(c.handle, User, System, ref options, out native,
                                                              ref extras, out error);
                    }
                    GC.KeepAlive(fn);
                    c.RefreshWorkerPid();
                    StatusErrors.Check(status, error);
                    response = Response.FromNative(ref native, ref extras);
                }
                finally
                {
                    NativeMethods.lshm_response_free(ref native);
                    pins.Free();
                }

                if (callbackError != null)
                    ExceptionDispatchInfo.Capture(callbackError).Throw();
                if (Streaming)
                {
                    EventHandler<StreamUpdateEventArgs> handler = c.OnStreamUpdate;
                    if (handler != null)
                        handler(c, new StreamUpdateEventArgs(response.Text, "", response.Usage.GeneratedTokens, true, response));
                }
                if (response.Finish == FinishReason.Cancelled)
                {
                    string why = run.Reason;
                    bool byToken = token.IsCancellationRequested && why == "its CancellationToken was cancelled";
                    throw new RequestCanceledException(
                        "the request was cancelled (" + (why ?? "the worker is shutting down") + ") after "
                        + response.Text.Length + " characters", response, byToken ? token : CancellationToken.None);
                }
                return response;
            }
        }
    }
}
