import { defineConfig } from 'vitest/config';

export default defineConfig({
  resolve: {
    // Tests import the package by its own name, as users do, and run the TypeScript sources.
    conditions: ['sluice-source'],
  },
  ssr: {
    resolve: {
      conditions: ['sluice-source'],
      externalConditions: ['sluice-source'],
    },
  },
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    pool: 'forks',
  },
});
