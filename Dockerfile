# One rate-limiting node (a primary and its workers). Build: docker build -t rate-limiting-api .
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY scripts ./scripts
COPY proto ./proto
COPY src ./src
COPY bench ./bench
RUN npm run build && npm prune --omit=dev

FROM node:20-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY proto ./proto
COPY config ./config
USER node
EXPOSE 9098
# The primary drains its workers on SIGTERM (flush to Redis, leave the ring); give it time.
STOPSIGNAL SIGTERM
CMD ["node", "dist/src/main.js"]
