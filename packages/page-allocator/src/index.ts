export { EvictionPlan } from './eviction-plan.ts';
export type { AllocatorUsage, CompactionResult, PageAllocatorOptions } from './page-allocator.ts';
export { PageAllocator } from './page-allocator.ts';
