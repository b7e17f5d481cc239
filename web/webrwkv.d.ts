// Types of web/webrwkv.js, the embedding API of webrwkv (RWKV on WebGPU in a Web Worker).

/** Why an engine call failed: "options" (a wrong option), "nowebgpu", "setup", "network", "http",
 * "norange", "badfile", "aborted", "gpu", "devicelost", "engine", "disposed". */
export type ErrorKind = "options" | "nowebgpu" | "setup" | "network" | "http" | "norange" | "badfile" | "aborted"
  | "gpu" | "devicelost" | "engine" | "disposed" | (string & {});

export class WebRwkvError extends Error {
  constructor(kind: ErrorKind, message: string);
  readonly name: "WebRwkvError";
  readonly kind: ErrorKind;
  /** Set to false on a failed load that had already freed the previous model. */
  readonly modelKept?: false;
}

/** Engine.kernelTimes(): µs a step, by kernel (a GEMV with its K); sum_us against step_us is the overlap. */
export interface KernelTimes {
  what: string;
  dispatches: number;
  step_us: number;
  sum_us: number;
  kernels: Record<string, { dispatches: number; us: number }>;
}

export interface WebGpuSupport { ok: boolean; message: string }
/** Whether WebGPU is usable here, and what to do when it is not. Never throws. */
export function webgpuSupport(): Promise<WebGpuSupport>;

export interface CachedModel { url: string; size: number; time: number }
/** Models kept in this origin's Cache API (no engine needed). */
export function cachedModels(): Promise<CachedModel[]>;
/** Forget every cached model of this origin. */
export function clearModelCache(): Promise<boolean>;

export type LoadPhase = "runtime" | "header" | "plan" | "weights" | "finish" | "kernels";
export interface LoadProgress {
  phase: LoadPhase;
  /** What is happening, for people ("Preparing the GPU kernels…"). */
  text?: string;
  /** phase "weights": bytes so far and in all, MB/s of the download, whether bytes came from the cache. */
  loaded?: number; total?: number; mbps?: number; fromCache?: boolean;
  /** phase "kernels": kernels prepared so far (of `total`). */
  done?: number;
}

export type Quant = "none" | "int8" | "nf4";

export interface EngineOptions {
  /** A model to load at once (a URL, resolved against the page). */
  model?: string | URL;
  /** The model's vocabulary, when it is not `<model>.vocab.txt` next to it. */
  vocab?: string | URL;
  onProgress?: (p: LoadProgress) => void;
  /** Where worker.js, vendor/ and wheels/ are (default: next to webrwkv.js). May be another origin. */
  baseUrl?: string | URL;
  /** The worker script itself, when it is not `${baseUrl}worker.js`. */
  workerUrl?: string | URL;
  /** Keep downloaded weights in the Cache API (default true). */
  cache?: boolean;
  /** Quantize the layers' matrices on the GPU while loading. */
  quant?: Quant;
  signal?: AbortSignal;
}

export interface LoadOptions {
  vocab?: string | URL;
  onProgress?: (p: LoadProgress) => void;
  cache?: boolean;
  /** Kernel knobs, e.g. {gemv_rows: 4}. */
  tuning?: Record<string, number>;
  quant?: Quant;
  /** Aborting it cancels the load (the promise rejects with an AbortError). */
  signal?: AbortSignal;
  /** Up to 7 more URLs of the same file (other hosts): the weights' blocks are spread over all of them, since a
   * browser opens at most 6 connections to one host. Each must answer Range requests (and CORS, on another
   * site) and start with the model's bytes; one that does not fails the load with a clear LoadError. */
  mirrors?: (string | URL)[];
}

export interface ChatFormat {
  user: string; bot: string; sep: string; end: string; intro?: string;
  turns?: [string, string][]; stops: string[]; description?: string;
}

/** A model card (`<model>.card.json` next to the model file), as the engine returns it. */
export interface ModelCard {
  name: string;
  kind: "chat" | "completion";
  description: string;
  licence: string;
  training_data: string;
  sample_prompt: string;
  context_length: number;
  prompt_format: { user: string; bot: string; separator: string; turn_end: string; intro: string;
    turns: [string, string][]; description: string };
  stop: string[];
  sampling: Partial<Record<"temperature" | "top_p" | "top_k" | "presence_penalty" | "frequency_penalty", number>>;
  /** The chat format in the names of ChatFormat. */
  chat: ChatFormat;
}

export interface LoadStats {
  /** Bytes of weights, fetched from the network, and read from the cache. */
  total: number; fetched: number; fromCache: number;
  /** The whole load, and the weights' download (or cache read) alone, in seconds. */
  seconds: number; streamSeconds: number;
  /** Where the load's time went, in seconds: the header (and vocabulary), planning the GPU buffers, the
   * weights, and the last conversions, the rest of the kernels' compiles and the warm-up. */
  phases: { header: number; plan: number; stream: number; finish: number };
  /** Download workers the weights came from (0: fetched in the loader's thread, or from the cache). */
  workers: number;
  heapGrowth: number; heapBytes: number; pyPeak: number;
}

export interface ModelInfo {
  name: string; url: string; version: "v4" | "v5" | "v6" | "v7";
  n_layer: number; n_embd: number; n_head: number; head_size: number; vocab: number; dim_ffn: number;
  layout: string; dtype: string; adapter: string; prefill_kernel: string; quant: Quant; weight_bytes: number;
  /** The model card next to the model file, or null; cardError says why a card could not be used. */
  card: ModelCard | null; cardError: string;
  /** The chat format the engine uses for this model, when the engine gives one. */
  chat_format?: ChatFormat;
  load: LoadStats;
  /** Seconds from the load's start until every kernel had compiled (compile_s, as each compile's promise
   * settled; seen_s, when the engine's Python had seen them all; record_s of it writing their sources), and
   * after the weights, to the first steps run once (ready_s). */
  kernels: { compile_s: number; seen_s: number; record_s: number; ready_s: number };
}

export interface GenerateOptions {
  /** At least 1 (default 128). */
  maxTokens?: number;
  /** At least 0; 0 is greedy (default 1). */
  temperature?: number;
  /** Above 0, at most 1 (default 0.85). */
  topP?: number;
  /** 0 turns it off (default). */
  topK?: number;
  presencePenalty?: number;
  frequencyPenalty?: number;
  /** The text ends before the first of these. */
  stop?: string | string[];
  /** A whole number for repeatable sampling, or null. */
  seed?: number | null;
  ignoreEos?: boolean;
  /** Separate the prompt from what the model read before by a blank line. */
  chat?: boolean;
  /** Aborting it stops the generation; the iterator then throws an AbortError. */
  signal?: AbortSignal;
}

export interface Token { token: number; text: string }

export interface GenerationStats {
  prompt_tokens: number; completion_tokens: number; prefill_s: number; decode_s: number;
  prefill_tps: number; decode_tps: number; py_step_s: number; py_share: number; js_calls_per_step: number;
  stop_reason: "stop" | "eos" | "max_tokens" | "stopped" | (string & {});
  finish_reason: "stop" | "length";
  ids: number[];
}

/** Async iterator of tokens; leaving a for-await loop early stops the generation. */
export interface TokenStream extends AsyncIterableIterator<Token> {
  next(): Promise<IteratorResult<Token, GenerationStats>>;
}

export type ChatRole = "system" | "user" | "assistant";
export interface ChatMessage { role: ChatRole; content: string | { type: "text"; text: string }[] }

export interface ChatCompletionRequest {
  messages: ChatMessage[];
  stream?: boolean;
  stream_options?: { include_usage?: boolean };
  /** Ignored: the engine answers with its loaded model. */
  model?: string;
  temperature?: number;
  top_p?: number;
  max_tokens?: number;
  max_completion_tokens?: number;
  stop?: string | string[];
  seed?: number | null;
  presence_penalty?: number;
  frequency_penalty?: number;
  /** Only 1. */
  n?: 1;
  user?: string;
  signal?: AbortSignal;
}
export interface RequestOptions { signal?: AbortSignal }

export interface Usage { prompt_tokens: number; completion_tokens: number; total_tokens: number }
export type FinishReason = "stop" | "length";

export interface ChatCompletion {
  id: string; object: "chat.completion"; created: number; model: string;
  choices: { index: 0; message: { role: "assistant"; content: string }; logprobs: null; finish_reason: FinishReason }[];
  usage: Usage;
}

export interface ChatCompletionChunk {
  id: string; object: "chat.completion.chunk"; created: number; model: string;
  choices: { index: 0; delta: { role?: "assistant"; content?: string }; logprobs: null; finish_reason: FinishReason | null }[];
  /** Set on the chunk that finishes the reply (and on the extra last chunk with stream_options.include_usage). */
  usage: Usage | null;
}

export interface ChatCompletions {
  create(body: ChatCompletionRequest & { stream: true }, options?: RequestOptions): Promise<AsyncIterable<ChatCompletionChunk>>;
  create(body: ChatCompletionRequest & { stream?: false }, options?: RequestOptions): Promise<ChatCompletion>;
  create(body: ChatCompletionRequest, options?: RequestOptions): Promise<ChatCompletion | AsyncIterable<ChatCompletionChunk>>;
}

export interface Engine {
  /** The GPU adapter's name. */
  readonly adapter: string;
  /** The loaded model, or null. */
  readonly model: ModelInfo | null;
  readonly stats: Partial<GenerationStats> & { adapter: string; load?: LoadStats };
  readonly chat: { completions: ChatCompletions };
  load(url: string | URL, options?: LoadOptions): Promise<ModelInfo>;
  /** Continue from the current state; the prompt is text or token ids. */
  generate(prompt: string | number[], options?: GenerateOptions): TokenStream;
  /** Tokens of `text`, or of a conversation as the model reads it (its chat format, system text, turns). */
  countTokens(text: string | { role: ChatRole; content: string }[]): Promise<number>;
  /** Stop the running generation after the token in flight. */
  stop(): void;
  reset(): Promise<void>;
  saveState(name?: string): Promise<void>;
  restoreState(name?: string): Promise<void>;
  /** Start every reset from a state file (.st or .pth holding blocks.N.att.time_state); null: the model's own
   * state. Resets now; a state made for another model rejects (kind "badfile") and changes nothing. */
  loadState(url: string | URL | null): Promise<{ name: string; layers: number }>;
  refreshStats(): Promise<Engine["stats"]>;
  /** Where a step's GPU time goes, by kernel: a decode step of `batch` slots (default 1), or with `prefill`
   * a prefill chunk of that many tokens; each kernel's dispatches run alone `steps` times. Resets the state. */
  kernelTimes(opts?: { batch?: number; steps?: number; prefill?: number }): Promise<KernelTimes>;
  unload(): Promise<void>;
  cachedModels(): Promise<CachedModel[]>;
  clearCache(): Promise<boolean>;
  onDeviceLost(listener: (info: { type: "lost"; message: string }) => void): void;
  dispose(): void;
}

/** Start the engine (Pyodide + WebGPU in a worker) and optionally load a model. */
export function createEngine(options?: EngineOptions): Promise<Engine>;

/** The default chat format: RWKV's "User: ..." / "Assistant: ..." turns. */
/** generate()'s options checked and in the engine's names. */
export function generateOptions(options?: GenerateOptions): Record<string, unknown>;
