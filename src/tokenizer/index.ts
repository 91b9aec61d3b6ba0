// The tokenizer layer: a model folder's tokenizer (the TextTokenizer contract), the DeepSeek-V4 prompt encoding,
// streaming detokenization, and the tokenizer files synthetic checkpoints carry.
export { DeepSeekTokenizer, loadTokenizer, type ByteLevelTokenizer } from './tokenizer.js';
export { writeTokenizerFiles, v4TokenizerJsonText, v4TokenizerConfig, v4GenerationConfig, TOKENIZER_FILES } from './files.js';
export { encodeChat, encodeChatText, parseCompletion, ReasoningSplitter, type ChatEncodeOptions, type ChatMessageWithReasoning, type ParsedCompletion } from './chat.js';
export { StreamDecoder, completeUtf8Prefix } from './detokenizer.js';
export * from './special-tokens.js';
